"""Cost of one GloFND threshold update + mask vs dataset size N (it must not grow with N).

Times a jitted step that gathers the batch rows of lambda and its Adam moments, takes the
quantile-gradient Adam step, scatters the rows back (state donated) and builds the keep-mask, for
N = 1e4 ... 1e7 on one device. Writes ``benchmarks/results/threshold_update_scaling.json``.

    python benchmarks/threshold_update_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from glofnd_jax import detection, similarity as sim, thresholds as thr

RESULTS = pathlib.Path(__file__).parent / "results"


def time_update(num_samples: int, batch: int, dim: int, steps: int, repeats: int) -> dict:
  config = thr.ThresholdConfig(alpha=0.01, lr=0.05)
  state = thr.init_thresholds(num_samples, config)
  negatives = sim.unimodal_negatives(batch)

  def step(state, key):
    k1, k2, k3 = jax.random.split(key, 3)
    index = jax.random.randint(k1, (batch,), 0, num_samples)
    z_a = sim.l2_normalize(jax.random.normal(k2, (batch, dim)))
    z_b = sim.l2_normalize(jax.random.normal(k3, (batch, dim)))
    sims = sim.unimodal_similarities(z_a, z_b)
    found = detection.detect("glofnd", sims, negatives, index, 1, config, state)
    return found.thresholds, jnp.sum(found.keep)

  step = jax.jit(step, donate_argnums=0)
  keys = jax.random.split(jax.random.key(0), steps)
  state, kept = step(state, keys[0])  # compile
  kept.block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for key in keys:
      state, kept = step(state, key)
    kept.block_until_ready()
    times.append((time.perf_counter() - start) / steps * 1e3)
  return {"N": num_samples, "batch": batch, "ms_per_step_median": statistics.median(times),
          "ms_per_step_min": min(times), "ms_per_step_max": max(times),
          "state_bytes_per_sample": sum(x.dtype.itemsize for x in jax.tree.leaves(state))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N up to 1e6, fewer steps (< 1 min)")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "threshold_update_scaling.json")
  args = parser.parse_args(argv)
  sizes = [10**4, 10**5, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7]
  steps, repeats = (20, 3) if args.quick else (100, 5)
  rows = [time_update(n, args.batch, 128, steps, repeats) for n in sizes]
  ratio = rows[-1]["ms_per_step_median"] / rows[0]["ms_per_step_median"]
  report = {"benchmark": "threshold_update_scaling", "quick": args.quick,
            "device": jax.devices()[0].device_kind, "platform": platform.platform(),
            "jax": jax.__version__, "rows": rows, "largest_over_smallest": ratio}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=1))
  print("| N | ms/step (median) | min | max | state bytes/sample |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['N']:.0e} | {r['ms_per_step_median']:.3f} | {r['ms_per_step_min']:.3f} | "
          f"{r['ms_per_step_max']:.3f} | {r['state_bytes_per_sample']} |")
  print(f"largest N / smallest N step time: {ratio:.3f}")
  return report


if __name__ == "__main__":
  main()
