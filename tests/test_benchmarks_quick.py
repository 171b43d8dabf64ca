"""Smoke test of every benchmark's quick mode: each runs once and writes well-formed JSON.

The scripts run as subprocesses (``state_scaling.py`` fixes its fake device count before jax is
imported), writing into a temporary directory via ``--out`` so the committed results in
``benchmarks/results/`` are never touched. Their cost is mostly XLA compilation, which is
single-threaded, so two run at a time; they share a persistent compilation cache (the digits
train step of ``quality_study`` and ``quantile_tracking`` is the same program). Nothing about the
numbers is asserted: quick modes are too short to measure anything.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
PARALLEL = 2
TIMEOUT_S = 600

# name -> (command given the JSON path, expected "benchmark" field); longest first.
COMMANDS = {
    # quality_study's quick mode through the treatment study's preset: its two runs at once,
    # each in a child process (--jobs 2), into a temp store
    "treatment_study_digits": (
        lambda out: [sys.executable, "treatment_study.py", "--quick", "--studies", "digits",
                     "--jobs", "2", "--out-dir", str(pathlib.Path(out).parent)],
        "treatment_study_digits"),
    "overhead": (lambda out: [sys.executable, "overhead.py", "--quick", "--out", out], "overhead"),
    "quantile_tracking": (lambda out: [sys.executable, "quantile_tracking.py", "--quick", "--out",
                                       out], "quantile_tracking"),
    "quantile_tracking_batch_sweep": (
        lambda out: [sys.executable, "quantile_tracking.py", "--quick", "--batch-sweep", "32,64",
                     "--out", out], "quantile_tracking_batch_sweep"),
    "gpu_check": (lambda out: ["bash", "gpu_check.sh", "--cpu-smoke", f"--out={out}"],
                  "gpu_check"),
    "state_scaling": (lambda out: [sys.executable, "state_scaling.py", "--quick", "--out", out],
                      "state_scaling"),
    "threshold_update_scaling": (lambda out: [sys.executable, "threshold_update_scaling.py",
                                              "--quick", "--out", out],
                                 "threshold_update_scaling"),
    "siglip_ring": (lambda out: [sys.executable, "siglip_ring.py", "--quick", "--out", out],
                    "siglip_ring"),
    "input_pipeline": (lambda out: [sys.executable, "input_pipeline.py", "--quick", "--out", out],
                       "input_pipeline"),
    "eval_cost": (lambda out: [sys.executable, "eval_cost.py", "--quick", "--out", out],
                  "eval_cost"),
}


def _env(tmp: pathlib.Path) -> dict:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # each script sets the device count it needs
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
  """Run every quick mode, ``PARALLEL`` at a time; ``{name: (returncode, log, json path, s)}``."""
  tmp = tmp_path_factory.mktemp("benchmarks_quick")
  env = _env(tmp)
  pending = list(COMMANDS)
  running, finished = {}, {}
  while pending or running:
    while pending and len(running) < PARALLEL:
      name = pending.pop(0)
      out = tmp / f"{name}.json"
      log = open(tmp / f"{name}.log", "w")
      process = subprocess.Popen(COMMANDS[name][0](str(out)), cwd=BENCHMARKS, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
      running[name] = (process, log, out, time.monotonic())
    for name, (process, log, out, started) in list(running.items()):
      elapsed = time.monotonic() - started
      if process.poll() is None and elapsed > TIMEOUT_S:
        process.kill()
        process.wait()
      if process.poll() is not None:
        log.close()
        finished[name] = (process.returncode, (tmp / f"{name}.log").read_text(), out, elapsed)
        del running[name]
    time.sleep(0.2)
  return finished


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_quick_mode_writes_well_formed_json(quick_runs, name):
  returncode, log, out, elapsed = quick_runs[name]
  assert returncode == 0, f"{name} failed after {elapsed:.0f} s:\n{log[-4000:]}"
  assert out.exists(), f"{name} wrote no JSON:\n{log[-2000:]}"
  report = json.loads(out.read_text())
  assert isinstance(report, dict)
  assert report["benchmark"] == COMMANDS[name][1]
