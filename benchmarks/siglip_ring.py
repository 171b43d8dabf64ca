"""SigLIP + GloFND, dense vs ring: compiled per-device memory and step time vs global batch.

Compiles ``value_and_grad`` of :func:`glofnd_jax.objectives.bimodal_objective` (SigLIP, GloFND
detection with removal, features ``(B, d)`` sharded over the ``data`` axis) for ``impl="dense"``
(each device its ``B/D`` image rows against all ``B`` text columns) and ``impl="ring"`` (text
chunks passed around the ring; one ``(B/D, B/D)`` block at a time), and reads the compiled
program's per-device memory (``compiled.memory_analysis()``: temporaries, arguments, outputs)
for global batch B = 1k ... 32k on meshes of D = 1, 2, 4, 8 fake CPU devices; the step is timed
on D = 8 up to ``--time-max``. Writes ``benchmarks/results/siglip_ring.json`` and prints the
markdown tables of BENCHMARKS.md.

    python benchmarks/siglip_ring.py [--quick] [--batches 1024,...] [--time-max 8192] [--out FILE]
"""

from __future__ import annotations

import common  # imports no jax

common.fake_cpu_devices(8)  # before jax is imported

import argparse  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from glofnd_jax import (
  objectives,  # noqa: E402
  sharding,  # noqa: E402
  siglip,  # noqa: E402
)
from glofnd_jax import thresholds as thr  # noqa: E402

NAME = "siglip_ring"
MIB = 2.0 ** 20


def compile_step(impl: str, mesh, batch: int, dim: int, num_samples: int):
  """The compiled step, a fresh state and its sharding (features and state as in training).

  The step is ``value_and_grad`` of the objective in the features, logit scale and bias:
  ``step(img, txt, index, state, scale, bias) -> (loss, new_state, grads)``; state donated.
  """
  config = objectives.BimodalConfig(loss="siglip", impl=impl, mode="glofnd",
                                    thresholds=thr.ThresholdConfig(alpha=0.01))
  state = objectives.init_bimodal_state(num_samples, config)
  rows = lambda x: sharding.constrain_similarity_rows(x, mesh)

  def step(img, txt, index, state, scale, bias):
    def fn(img, txt, scale, bias):
      return objectives.bimodal_objective(img, txt, index, index, state, 1, scale, config,
                                          constrain_rows=rows, bias=bias, mesh=mesh)
    (loss, aux), grads = jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)(
        img, txt, scale, bias)
    return loss, aux.state, grads

  batch_sharding = sharding.batch_sharding(mesh)
  state_sharding = sharding.per_sample_shardings(state, mesh, num_samples)
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(step, in_shardings=(batch_sharding, batch_sharding, batch_sharding,
                                       state_sharding, replicated, replicated),
                   donate_argnums=3)
  features = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
  index = jax.ShapeDtypeStruct((batch,), jnp.int32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  abstract_state = jax.eval_shape(lambda: state)
  compiled = jitted.lower(features, features, index, abstract_state, scalar, scalar).compile()
  return compiled, state, state_sharding


def measure(impl: str, devices: int, batch: int, dim: int, steps: int) -> dict:
  mesh = sharding.make_mesh(jax.devices()[:devices])
  num_samples = sharding.padded_size(4 * batch, mesh)
  start = time.perf_counter()
  compiled, state, state_sharding = compile_step(impl, mesh, batch, dim, num_samples)
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  row = {"impl": impl, "devices": devices, "batch": batch, "dim": dim, "compile_s": compile_s,
         "temp_bytes": int(memory.temp_size_in_bytes),
         "argument_bytes": int(memory.argument_size_in_bytes),
         "output_bytes": int(memory.output_size_in_bytes),
         "similarity_bytes_expected": 4 * (batch // devices) * (
             batch if impl == "dense" else batch // devices)}
  if steps:
    rng = np.random.default_rng(0)
    rows_sharding = sharding.batch_sharding(mesh)
    img = jax.device_put(rng.normal(size=(batch, dim)).astype(np.float32), rows_sharding)
    txt = jax.device_put(rng.normal(size=(batch, dim)).astype(np.float32), rows_sharding)
    idx = jax.device_put(rng.permutation(num_samples)[:batch].astype(np.int32), rows_sharding)
    state = jax.device_put(state, state_sharding)
    scale = jnp.float32(np.exp(siglip.LOG_SCALE_INIT))
    bias = jnp.float32(siglip.BIAS_INIT)
    times = []
    for s in range(steps + 1):
      begin = time.perf_counter()
      loss, state, grads = compiled(img, txt, idx, state, scale, bias)
      jax.block_until_ready((loss, grads))
      if s:  # the first call warms up
        times.append((time.perf_counter() - begin) * 1e3)
    row["step_ms"] = common.spread(times)
  return row


def tables(rows: list[dict], batches: list[int], devices: list[int]) -> str:
  by_key = {(r["impl"], r["devices"], r["batch"]): r for r in rows}
  header = ["impl", "D"] + [f"B={b}" for b in batches]
  memory_rows = []
  for impl in ("dense", "ring"):
    for d in devices:
      cells = [by_key.get((impl, d, b)) for b in batches]
      memory_rows.append([impl, d] + [f"{c['temp_bytes'] / MIB:.1f}" if c else "-" for c in cells])
  ratio_rows = []
  for d in devices:
    cells = []
    for b in batches:
      dense, ring = by_key.get(("dense", d, b)), by_key.get(("ring", d, b))
      cells.append(f"{ring['temp_bytes'] / dense['temp_bytes']:.3f}" if dense and ring else "-")
    ratio_rows.append(["ring / dense", d] + cells)
  timed = [r for r in rows if "step_ms" in r]
  time_batches = sorted({r["batch"] for r in timed})
  time_rows = []
  for impl in ("dense", "ring"):
    cells = [by_key.get((impl, 8, b)) for b in time_batches]
    time_rows.append([impl, 8] + [f"{c['step_ms']['median']:.0f}" if c and "step_ms" in c else "-"
                                  for c in cells])
  return ("Per-device temporary memory, MiB (`memory_analysis().temp_size_in_bytes`):\n\n"
          + common.markdown_table(header, memory_rows + ratio_rows)
          + "\n\nStep time on 8 fake CPU devices, ms (median):\n\n"
          + common.markdown_table(["impl", "D"] + [f"B={b}" for b in time_batches], time_rows))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="B = 256, 512 on D = 1, 8 (< 1 min)")
  parser.add_argument("--batches", default="1024,2048,4096,8192,16384,32768")
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--time-max", type=int, default=8192, help="largest B whose step is timed")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per (impl, B)")
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  if args.quick:
    batches, devices, time_max, steps = [256, 512], [1, 8], 256, 1
  else:
    batches = [int(b) for b in args.batches.split(",")]
    devices = [int(d) for d in args.devices.split(",")]
    time_max, steps = args.time_max, args.steps
  if max(devices) > jax.device_count():
    raise ValueError(f"--devices asks for {max(devices)} devices; this process has "
                     f"{jax.device_count()}.")
  rows = []
  for batch in batches:
    for d in devices:
      for impl in ("dense", "ring"):
        timed = steps if d == max(devices) and batch <= time_max else 0
        row = measure(impl, d, batch, args.dim, timed)
        rows.append(row)
        print(f"{impl:5s} D={d} B={batch}: temp {row['temp_bytes'] / MIB:.1f} MiB"
              + (f", step {row['step_ms']['median']:.0f} ms" if "step_ms" in row else ""),
              flush=True)
  report = {"benchmark": NAME, "quick": args.quick, "machine": common.machine(),
            "loss": "siglip", "mode": "glofnd", "treatment": "remove", "rows": rows}
  out = common.write_json(report, common.output_path(args.out, NAME, args.quick))
  print(tables(rows, batches, devices))
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
