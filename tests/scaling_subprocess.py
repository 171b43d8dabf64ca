"""Run ``tests/scaling_worker.py`` in a fresh Python with its own fake CPU device count.

The device count must be fixed before jax is imported, and pytest has usually imported jax
already, so every multi-device check runs in a subprocess.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent
WORKER = TESTS / "scaling_worker.py"


def worker_env(devices: int) -> dict:
  """This environment on ``devices`` fake CPU devices, with the repository importable."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS.parent), env.get("PYTHONPATH")]))
  return env


def start(*args, devices: int = 8) -> subprocess.Popen:
  """Start the worker with ``args`` (strings); stdout and stderr are captured."""
  return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=worker_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300, expect: int = 0) -> str:
  """Wait for ``process``; fail with (the end of) its output unless it exits with ``expect``."""
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    raise AssertionError(f"{process.args} timed out after {timeout}s:\n{output[-6000:]}")
  if process.returncode != expect:
    raise AssertionError(f"{process.args} exited with {process.returncode}, expected {expect}:\n"
                         f"{output[-6000:]}")
  return output


def run(*args, devices: int = 8, timeout: float = 300) -> str:
  return finish(start(*args, devices=devices), timeout)
