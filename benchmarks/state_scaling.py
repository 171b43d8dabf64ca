"""Train-step time vs dataset size N with the per-sample state sharded over 8 devices.

Times the jitted, donated SogCLR + GloFND train step of ``glofnd_jax.training.step`` (tiny
Dense-BatchNorm-Dense encoder, global batch 256) for N = 1e4 ... 1e7, and 1e8 when the machine
has the memory for it (``--max-n``), on a mesh of 8 fake CPU devices and on a 1-device mesh, and
reports the per-sample state's bytes per sample and per device. Targets: the step costs
O(batch), every N's step time within 5 % of the smallest N's (the median over repeats of the
ratio within a repeat, by wall clock and by this process's CPU time, which on a shared machine
does not count the time spent waiting for other processes); the unimodal state is 16
bytes per sample (f32 lambda, its two Adam moments, SogCLR's u), divided evenly across devices.
Sizes are timed round-robin (every repeat visits every N) so that load from other processes on
the machine spreads evenly. Writes ``benchmarks/results/state_scaling.json``.

    python benchmarks/state_scaling.py [--quick] [--max-n 1e8] [--nonfinite skip]
                                       [--devices 8] [--out FILE]
"""

from __future__ import annotations

import common  # imports no jax

common.fake_cpu_devices(8)  # before jax is imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from glofnd_jax import (
  objectives,  # noqa: E402
  sharding,  # noqa: E402
)
from glofnd_jax import thresholds as thr  # noqa: E402
from glofnd_jax.training import step as ts  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
IN_DIM = 32
FLAT_TOLERANCE = 0.05      # every N within 5 % of the smallest N
BYTES_PER_SAMPLE = 16      # unimodal SogCLR + GloFND: lambda, two moments, u (f32 each)
MEMORY_FACTOR = 4          # N is timed only if MemAvailable > 4 x its state bytes


def available_memory_bytes() -> int | None:
  """``MemAvailable`` from /proc/meminfo (None where there is no such file)."""
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def sizes_for(max_n: int, quick: bool) -> tuple[list[int], list[int]]:
  """The N to time (powers of ten from 1e4) and those skipped for lack of memory."""
  if quick:
    return [10**4, 10**6], []
  sizes, skipped = [], []
  available = available_memory_bytes()
  n = 10**4
  while n <= max_n:
    fits = available is None or available > MEMORY_FACTOR * BYTES_PER_SAMPLE * n
    (sizes if fits else skipped).append(n)
    n *= 10
  return sizes, skipped


class TinyEncoder(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense(64): keeps the model's share of the step small."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(64, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(64)(nn.relu(x))


def make_run(num_samples: int, mesh, global_batch: int, num_batches: int = 4,
             nonfinite: str = "off"):
  """A compiled step (``nonfinite`` policy), its state and a few device-resident batches."""
  config = objectives.UnimodalConfig(loss="sogclr", thresholds=thr.ThresholdConfig(alpha=0.01))
  model, tx = TinyEncoder(), optax.sgd(0.1)
  step = ts.make_unimodal_train_step(model, tx, config, num_samples=num_samples,
                                     global_batch=global_batch, mesh=mesh, nonfinite=nonfinite)
  state = ts.create_train_state(model, tx, np.zeros((2, IN_DIM), np.float32), config,
                                num_samples, mesh, jax.random.key(0))
  rng = np.random.RandomState(num_samples % 2**31)
  batches = []
  for _ in range(num_batches):
    batch = {"view1": rng.normal(size=(global_batch, IN_DIM)).astype(np.float32),
             "view2": rng.normal(size=(global_batch, IN_DIM)).astype(np.float32),
             "index": rng.choice(num_samples, global_batch, replace=False).astype(np.int32)}
    batches.append(jax.device_put(batch, sharding.batch_sharding(mesh)))
  per_sample = jax.tree.leaves(state.per_sample)
  run = {"step": step, "state": state, "batches": batches, "times": [], "cpu_times": [],
         "bytes_per_sample": sum(leaf.dtype.itemsize for leaf in per_sample),
         "bytes_per_device": sum(leaf.addressable_shards[0].data.nbytes for leaf in per_sample),
         "padded": per_sample[0].shape[0]}
  time_steps(run, 2)  # compile and warm up
  return run


def time_steps(run: dict, steps: int) -> tuple[float, float]:
  """Wall and process-CPU milliseconds per step over ``steps`` consecutive steps (state donated
  and carried).

  Waits for every step: XLA:CPU with 8 fake devices on 2 cores deadlocked in a collective's
  rendezvous when dozens of steps were dispatched ahead (the thread pool fills with waiting
  device threads). The wait is the same for every N. The CPU time (all of this process's
  threads) does not include time the process waited for other processes on a shared machine.
  """
  state = run["state"]
  start, cpu_start = time.perf_counter(), time.process_time()
  for i in range(steps):
    state, metrics = run["step"](state, run["batches"][i % len(run["batches"])])
    metrics["loss"].block_until_ready()
  run["state"] = state
  return ((time.perf_counter() - start) / steps * 1e3,
          (time.process_time() - cpu_start) / steps * 1e3)


def plot(report: dict, path: pathlib.Path) -> None:
  """Step time vs N (wall and CPU medians with min-max) for each device count."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
  for ax, (key, label) in zip(axes, (("ms_per_step", "wall"), ("cpu_ms_per_step", "process CPU"))):
    for devices in sorted({r["devices"] for r in report["rows"]}):
      own = [r for r in report["rows"] if r["devices"] == devices]
      n = [r["N"] for r in own]
      values = [r[key + "_all"] for r in own]
      median = [statistics.median(v) for v in values]
      ax.errorbar(n, median, yerr=[[m - min(v) for m, v in zip(median, values)],
                                   [max(v) - m for m, v in zip(median, values)]],
                  marker="o", capsize=3, label=f"{devices} device(s)")
    ax.set_xscale("log")
    ax.set_xlabel("N (per-sample state rows)")
    ax.set_ylabel(f"{label} ms / step")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{label} time (median, min-max over repeats)", fontsize=9)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N in {1e4, 1e6}, fewer steps (< 1 min)")
  parser.add_argument("--batch", type=int, default=256, help="global batch")
  parser.add_argument("--max-n", type=float, default=1e8,
                      help="largest N (powers of ten from 1e4; skipped if memory is short)")
  parser.add_argument("--repeats", type=int, default=None, help="round-robin repeats (default 9)")
  parser.add_argument("--steps", type=int, default=None, help="steps per timed block (default 40)")
  parser.add_argument("--nonfinite", choices=("off", "stop", "skip"), default="off",
                      help="the step's non-finite policy (config.nonfinite)")
  parser.add_argument("--devices", type=int, choices=(1, 8), nargs="+", default=[8, 1],
                      help="mesh sizes to time")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  started = time.time()
  sizes, skipped = sizes_for(int(args.max_n), args.quick)
  if skipped:
    print(f"skipping N = {', '.join(f'{n:.0e}' for n in skipped)}: not enough free memory")
  steps, repeats = (10, 3) if args.quick else (40, 9)
  steps, repeats = args.steps or steps, args.repeats or repeats
  out = args.out or RESULTS / ("state_scaling_quick.json" if args.quick else "state_scaling.json")

  all_meshes = {8: sharding.make_mesh(), 1: sharding.make_mesh(jax.devices()[:1])}
  meshes = {d: all_meshes[d] for d in args.devices}
  rows = []
  for devices, mesh in meshes.items():
    runs = {n: make_run(n, mesh, args.batch, nonfinite=args.nonfinite) for n in sizes}
    for _ in range(repeats):  # round-robin over N
      for n in sizes:
        wall, cpu = time_steps(runs[n], steps)
        runs[n]["times"].append(wall)
        runs[n]["cpu_times"].append(cpu)
    smallest, smallest_cpu = runs[sizes[0]]["times"], runs[sizes[0]]["cpu_times"]
    for n in sizes:
      run = runs[n]
      median = statistics.median(run["times"])
      # Paired by repeat (the sizes of one repeat ran back to back), then the median: robust to
      # load from other processes that comes and goes between repeats.
      paired = statistics.median(t / t0 for t, t0 in zip(run["times"], smallest))
      paired_cpu = statistics.median(t / t0 for t, t0 in zip(run["cpu_times"], smallest_cpu))
      rows.append({"devices": devices, "N": n, "N_pad": run["padded"], "batch": args.batch,
                   "ms_per_step_median": median,
                   "ms_per_step_min": min(run["times"]), "ms_per_step_max": max(run["times"]),
                   "ms_per_step_all": run["times"], "ratio_to_smallest_n": paired,
                   "cpu_ms_per_step_median": statistics.median(run["cpu_times"]),
                   "cpu_ms_per_step_all": run["cpu_times"], "cpu_ratio_to_smallest_n": paired_cpu,
                   "state_bytes_per_sample": run["bytes_per_sample"],
                   "state_bytes_per_device": run["bytes_per_device"],
                   "bytes_as_expected": (
                       run["bytes_per_sample"] == BYTES_PER_SAMPLE
                       and run["bytes_per_device"] == BYTES_PER_SAMPLE * run["padded"] // devices)})
    del runs

  ratios, checks = {}, {}
  for devices in meshes:
    own = [r for r in rows if r["devices"] == devices]
    ratios[devices] = own[-1]["ms_per_step_median"] / own[0]["ms_per_step_median"]
    deviation = max(abs(r["ratio_to_smallest_n"] - 1.0) for r in own)
    cpu_deviation = max(abs(r["cpu_ratio_to_smallest_n"] - 1.0) for r in own)
    checks[str(devices)] = {"max_deviation_from_smallest_n": deviation,
                            "flat_within_5pct": deviation <= FLAT_TOLERANCE,
                            "cpu_max_deviation_from_smallest_n": cpu_deviation,
                            "cpu_flat_within_5pct": cpu_deviation <= FLAT_TOLERANCE,
                            "bytes_as_expected": all(r["bytes_as_expected"] for r in own)}
  report = {"benchmark": "state_scaling", "nonfinite": args.nonfinite, "quick": args.quick, "steps_per_repeat": steps,
            "repeats": repeats, "device": jax.devices()[0].device_kind,
            "cpu_cores": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
            "load_average_at_start": os.getloadavg(), "skipped_sizes": skipped,
            "target": {"flat_tolerance": FLAT_TOLERANCE, "bytes_per_sample": BYTES_PER_SAMPLE},
            "rows": rows, "largest_over_smallest": {str(k): v for k, v in ratios.items()},
            "checks": checks, "wall_s": time.time() - started}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))
  plot(report, out.with_suffix(".png"))

  print("| devices | N | wall ms/step (median) | min | max | wall / smallest N | "
        "CPU ms/step (median) | CPU / smallest N | state bytes/sample | state bytes/device |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} | {r['N']:.0e} | {r['ms_per_step_median']:.2f} | "
          f"{r['ms_per_step_min']:.2f} | {r['ms_per_step_max']:.2f} | "
          f"{r['ratio_to_smallest_n']:.3f} | {r['cpu_ms_per_step_median']:.2f} | "
          f"{r['cpu_ratio_to_smallest_n']:.3f} | {r['state_bytes_per_sample']} | "
          f"{r['state_bytes_per_device']:,} |")
  for devices, ratio in ratios.items():
    check = checks[str(devices)]
    print(f"{devices} device(s): largest N / smallest N step time = {ratio:.3f}; max deviation "
          f"wall {check['max_deviation_from_smallest_n']:.3f} (flat within 5%: "
          f"{'yes' if check['flat_within_5pct'] else 'no'}), CPU "
          f"{check['cpu_max_deviation_from_smallest_n']:.3f} (flat within 5%: "
          f"{'yes' if check['cpu_flat_within_5pct'] else 'no'}); bytes as expected: "
          f"{'yes' if check['bytes_as_expected'] else 'no'}")
  return report


if __name__ == "__main__":
  main()
