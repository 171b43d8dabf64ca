"""Train-step time vs dataset size N with the per-sample state sharded over 8 devices.

Times the jitted, donated SogCLR + GloFND train step of ``glofnd_jax.train_step`` (tiny
Dense-BatchNorm-Dense encoder, global batch 256) for N = 1e4 ... 1e7, on a mesh of 8 fake CPU
devices and on a 1-device mesh, and reports the per-sample state's bytes per sample and per
device. The step must cost O(batch): the largest N within 10% of the smallest. Sizes are
timed round-robin (every repeat visits every N) so that load from other processes on the
machine spreads evenly. Writes ``benchmarks/results/state_scaling.json``.

    python benchmarks/state_scaling.py [--quick]
"""

from __future__ import annotations

import os

# The fake device count must be fixed before jax is imported.
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split()
     if not f.startswith("--xla_force_host_platform_device_count")]
    + ["--xla_force_host_platform_device_count=8"])

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from glofnd_jax import mesh as mesh_lib  # noqa: E402
from glofnd_jax import objectives  # noqa: E402
from glofnd_jax import thresholds as thr  # noqa: E402
from glofnd_jax import train_step as ts  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
IN_DIM = 32


class TinyEncoder(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense(64): keeps the model's share of the step small."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(64, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(64)(nn.relu(x))


def make_run(num_samples: int, mesh, global_batch: int, num_batches: int = 4):
  """A compiled step, its state and a few device-resident batches for one N."""
  config = objectives.UnimodalConfig(loss="sogclr", thresholds=thr.ThresholdConfig(alpha=0.01))
  model, tx = TinyEncoder(), optax.sgd(0.1)
  step = ts.make_unimodal_train_step(model, tx, config, num_samples=num_samples,
                                     global_batch=global_batch, mesh=mesh)
  state = ts.create_train_state(model, tx, np.zeros((2, IN_DIM), np.float32), config,
                                num_samples, mesh, jax.random.key(0))
  rng = np.random.RandomState(num_samples % 2**31)
  batches = []
  for _ in range(num_batches):
    batch = {"view1": rng.normal(size=(global_batch, IN_DIM)).astype(np.float32),
             "view2": rng.normal(size=(global_batch, IN_DIM)).astype(np.float32),
             "index": rng.choice(num_samples, global_batch, replace=False).astype(np.int32)}
    batches.append(jax.device_put(batch, mesh_lib.batch_sharding(mesh)))
  per_sample = jax.tree.leaves(state.per_sample)
  run = {"step": step, "state": state, "batches": batches, "times": [],
         "bytes_per_sample": sum(leaf.dtype.itemsize for leaf in per_sample),
         "bytes_per_device": sum(leaf.addressable_shards[0].data.nbytes for leaf in per_sample),
         "padded": per_sample[0].shape[0]}
  time_steps(run, 2)  # compile and warm up
  return run


def time_steps(run: dict, steps: int) -> float:
  """Milliseconds per step over ``steps`` consecutive steps (state donated and carried).

  Waits for every step: XLA:CPU with 8 fake devices on 2 cores deadlocked in a collective's
  rendezvous when dozens of steps were dispatched ahead (the thread pool fills with waiting
  device threads). The wait is the same for every N.
  """
  state = run["state"]
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = run["step"](state, run["batches"][i % len(run["batches"])])
    metrics["loss"].block_until_ready()
  run["state"] = state
  return (time.perf_counter() - start) / steps * 1e3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N in {1e4, 1e6}, fewer steps (< 1 min)")
  parser.add_argument("--batch", type=int, default=256, help="global batch")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  sizes = [10**4, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7]
  steps, repeats = (10, 3) if args.quick else (40, 7)
  out = args.out or RESULTS / ("state_scaling_quick.json" if args.quick else "state_scaling.json")

  meshes = {8: mesh_lib.make_mesh(), 1: mesh_lib.make_mesh(jax.devices()[:1])}
  rows = []
  for devices, mesh in meshes.items():
    runs = {n: make_run(n, mesh, args.batch) for n in sizes}
    for _ in range(repeats):  # round-robin over N
      for n in sizes:
        runs[n]["times"].append(time_steps(runs[n], steps))
    for n in sizes:
      run = runs[n]
      rows.append({"devices": devices, "N": n, "N_pad": run["padded"], "batch": args.batch,
                   "ms_per_step_median": statistics.median(run["times"]),
                   "ms_per_step_min": min(run["times"]), "ms_per_step_max": max(run["times"]),
                   "state_bytes_per_sample": run["bytes_per_sample"],
                   "state_bytes_per_device": run["bytes_per_device"]})
    del runs

  ratios = {}
  for devices in meshes:
    own = [r for r in rows if r["devices"] == devices]
    ratios[devices] = own[-1]["ms_per_step_median"] / own[0]["ms_per_step_median"]
  report = {"benchmark": "state_scaling", "quick": args.quick, "steps_per_repeat": steps,
            "repeats": repeats, "device": jax.devices()[0].device_kind,
            "cpu_cores": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
            "rows": rows, "largest_over_smallest": {str(k): v for k, v in ratios.items()}}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))

  print("| devices | N | N_pad | ms/step (median) | min | max | state bytes/sample "
        "| state bytes/device |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} | {r['N']:.0e} | {r['N_pad']} | {r['ms_per_step_median']:.2f} | "
          f"{r['ms_per_step_min']:.2f} | {r['ms_per_step_max']:.2f} | "
          f"{r['state_bytes_per_sample']} | {r['state_bytes_per_device']:,} |")
  for devices, ratio in ratios.items():
    print(f"{devices} device(s): largest N / smallest N step time = {ratio:.3f}")
  return report


if __name__ == "__main__":
  main()
