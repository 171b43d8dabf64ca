"""``glofnd-jax train`` on a tiny synthetic config in subprocesses, and reading their checkpoints.

The device count is fixed when jax is imported, so runs on 4 or 8 fake devices (and runs that
get signals) happen in subprocesses. All subprocesses of a test session share one persistent
compilation cache: the same program is compiled once, and a cached executable computes exactly
what a fresh compile does, so bit-for-bit comparisons between runs stay valid.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from scaling_subprocess import finish, worker_env

REPO = pathlib.Path(__file__).resolve().parent.parent
DIGITS_CONFIG = REPO / "configs" / "digits_sogclr_glofnd.py"
LAUNCH_LOCAL = REPO / "launch" / "local.py"

# tests/test_train.py:tiny() as command-line overrides (the digits recipe, small CNN).
TINY = ("--config.data.name=synthetic", "--config.data.synthetic_num_samples=64",
        "--config.data.read_threads=0", "--config.model.proj_hidden_dim=32",
        "--config.model.proj_dim=16", "--config.batch_size=16", "--config.epochs=2",
        "--config.optim.warmup_epochs=1", "--config.glofnd.start_update_epoch=1",
        "--config.glofnd.start_mask_epoch=1", "--config.log_every_steps=2",
        "--config.checkpoint_every_steps=3")


def env(devices: int = 1, cache_dir=None) -> dict:
  """Environment of a run on ``devices`` fake CPU devices, sharing ``cache_dir``'s compilations."""
  out = worker_env(devices)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    out.pop(name, None)
  if cache_dir is not None:
    out["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    out["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return out


def train_command(workdir, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "glofnd_jax.cli", "train", f"--config={DIGITS_CONFIG}",
          f"--workdir={workdir}", *TINY, *overrides]


def start(workdir, *overrides: str, devices: int = 1, cache_dir=None) -> subprocess.Popen:
  """Start a tiny training run (output captured: stdout and stderr together)."""
  return subprocess.Popen(train_command(workdir, *overrides), env=env(devices, cache_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(workdir, *overrides: str, devices: int = 1, cache_dir=None, timeout: float = 240) -> str:
  return finish(start(workdir, *overrides, devices=devices, cache_dir=cache_dir), timeout)


def read_state(workdir, step: int | None = None, num_samples: int = 64) -> tuple[int, dict]:
  """``(step, {leaf path: numpy array})`` of a run's checkpoint, on this process's one device.

  Per-sample arrays are cut to ``num_samples`` rows (their padding to the device count is not
  part of the result); PRNG keys are compared by their key data.
  """
  manager = ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / "checkpoints",
      item_handlers={"state": ocp.StandardCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    tree = manager.item_metadata(step)["state"].tree
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
  finally:
    manager.close()
  out = {}
  for key, leaf in ocp.tree.to_flat_dict(restored).items():
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    value = np.asarray(leaf)
    if key[0] == "per_sample" and value.ndim and value.shape[0] >= num_samples:
      value = value[:num_samples]
    out["/".join(map(str, key))] = value
  return step, out


def logged_steps(workdir) -> list[int]:
  """The steps of a run's complete ``metrics.jsonl`` rows so far."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines()
          if line.endswith("}")]


def wait_until_logged(process: subprocess.Popen, workdir, step: int, timeout: float = 240) -> None:
  """Return once the run of ``process`` has logged ``step`` or later; fail if it ends first."""
  deadline = time.monotonic() + timeout
  while not any(s >= step for s in logged_steps(workdir)):
    assert process.poll() is None, finish(process)
    assert time.monotonic() < deadline, f"the run logged no step >= {step} in {timeout}s"
    time.sleep(0.02)
