"""One-GPU check: ResNet-50 throughput with and without GloFND, and N = 1e8 per-sample state.

Run by ``benchmarks/gpu_check.sh`` (which picks the Python, applies a hard timeout and prints the
summary). Phases, each written to the JSON as soon as it is done, so a timeout keeps the
finished ones:

1. ``environment``: jax version, devices, GPU name and memory.
2. ``state_1e8``: the SogCLR + GloFND per-sample state for N = 1e8 (f32 lambda, two Adam moments,
   u: 16 bytes/sample, 1.6 GB) created directly on the device; device memory in use before and
   after; then a tiny-encoder train step timed at N = 1e8 vs N = 1e4, interleaved (the step must
   cost O(batch)).
3. ``throughput``: the real jitted train step of ResNet-50 (ImageNet stem, bfloat16 compute,
   224x224, global batch 256, two random views per image, N = ImageNet-1k's 1,281,167), SogCLR
   alone (mode ``none``) vs SogCLR + GloFND, compiled ahead of time and timed in interleaved
   blocks; images/s = batch / step time (each image is two views through the network).

4. ``augmented`` and 5. ``jpeg_train`` (:mod:`gpu_check_input`): the ResNet-50 step with the
   on-device augmentation of host-cropped uint8 view pairs vs without it, and the train step fed
   from a generated folder of ImageNet-size JPEGs (our pipeline, host crops, device prefetch)
   vs the same step on one reused batch: whether input keeps up with the GPU.

``--cpu-smoke`` runs the same phases at tiny sizes on the CPU (what CI tests), with the small CNN
instead of ResNet-50 (whose compilation alone takes minutes on a 2-core CPU).

    python benchmarks/gpu_check.py [--cpu-smoke] [--out FILE] [--budget-s 420]
        [--phases state_1e8,throughput,augmented,jpeg_train] [--state-steps 20]
        [--state-repeats 7]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback

import common
import flax.linen as nn
import gpu_check_input
import jax
import optax
import step_timing

from glofnd_jax import models, objectives, sharding
from glofnd_jax import thresholds as thr
from glofnd_jax.training import optim

IMAGENET_SIZE = 1_281_167
PHASES = ("state_1e8", "throughput", "augmented", "jpeg_train")


class TinyEncoder(nn.Module):
  """Dense -> ReLU -> Dense: keeps the model's share of the N-scaling step small."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(64)(nn.relu(nn.Dense(64)(x)))


def objective_config(alpha: float) -> objectives.UnimodalConfig:
  return objectives.UnimodalConfig(
      loss="sogclr", mode="glofnd", temperature=0.1, gamma=0.9,
      thresholds=thr.ThresholdConfig(alpha=alpha, lr=0.05, start_update=0, start_mask=0))


def device_bytes_in_use() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("bytes_in_use", 0))


def environment() -> dict:
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  return {**common.machine(), "device_repr": repr(device),
          "device_memory_limit_bytes": stats.get("bytes_limit")}


def state_phase(big_n: int, small_n: int, *, batch: int, steps: int, repeats: int, log) -> dict:
  mesh = sharding.make_mesh(jax.devices()[:1])
  config = objective_config(0.01)
  before = device_bytes_in_use()
  per_sample = sharding.init_per_sample_state_sharded(big_n, config, mesh)
  jax.block_until_ready(per_sample)
  after = device_bytes_in_use()
  leaves = jax.tree.leaves(per_sample)
  state_bytes = sum(leaf.nbytes for leaf in leaves)
  result = {"N": big_n, "state_bytes": state_bytes,
            "state_bytes_per_sample": sum(leaf.dtype.itemsize for leaf in leaves),
            "device_bytes_in_use_before": before, "device_bytes_in_use_after": after,
            "device_bytes_added": None if before is None or after is None else after - before}
  del per_sample, leaves
  log(f"state N={big_n:.0e}: {state_bytes / 1e9:.2f} GB, "
      f"{result['state_bytes_per_sample']} bytes/sample")

  model, tx = TinyEncoder(), optax.sgd(0.1)
  runs = {}
  for n in (small_n, big_n):
    runs[f"N={n:.0e}"] = step_timing.build_step(
        model, tx, config, "glofnd", batch=batch, image_shape=(32,), num_samples=n, mesh=mesh)
  step_timing.interleaved(runs, steps=steps, repeats=repeats)
  summary = step_timing.summarize(runs, baseline=f"N={small_n:.0e}")
  big, small = summary[f"N={big_n:.0e}"], summary[f"N={small_n:.0e}"]
  ratio = big[f"ratio_to_N={small_n:.0e}"]
  result.update({"step_batch": batch, "steps_per_block": steps, "repeats": repeats,
                 "step_ms": {k: v["ms_per_step"] for k, v in summary.items()},
                 # median of the per-block ratios (paired), and the ratio of the median times
                 "big_over_small_step_time": ratio["median"],
                 "big_over_small_step_time_iqr": [ratio["q1"], ratio["q3"]],
                 "big_over_small_median_ms": (big["ms_per_step"]["median"]
                                              / small["ms_per_step"]["median"]),
                 "peak_device_bytes": (jax.devices()[0].memory_stats() or {}).get(
                     "peak_bytes_in_use")})
  log(f"step time N={big_n:.0e} / N={small_n:.0e}: {result['big_over_small_step_time']:.3f} "
      f"(paired blocks), {result['big_over_small_median_ms']:.3f} (median times)")
  return result


def throughput_phase(*, model_name: str, model_kwargs: dict, image_size: int, batch: int,
                     num_samples: int, modes, steps: int, repeats: int, log) -> dict:
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = models.get_model(model_name, **model_kwargs)
  tx = optim.make_optimizer("lars", optim.scaled_lr(0.075, batch, "sqrt"), weight_decay=1e-6)
  runs = step_timing.build_modes(model, tx, objective_config(0.01), modes, batch=batch,
                                 image_shape=(image_size, image_size, 3),
                                 num_samples=num_samples, mesh=mesh, progress=log)
  step_timing.interleaved(runs, steps=steps, repeats=repeats, progress=log)
  summary = step_timing.summarize(runs, baseline=modes[0])
  for entry in summary.values():
    entry["images_per_s_median"] = batch / (entry["ms_per_step"]["median"] / 1e3)
  return {"model": model_name, "model_kwargs": {k: str(v) for k, v in model_kwargs.items()},
          "image_size": image_size, "batch": batch, "num_samples": num_samples,
          "steps_per_block": steps, "repeats": repeats, "baseline": modes[0], "modes": summary}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="tiny sizes on the CPU: checks the script, measures nothing")
  parser.add_argument("--modes", default="none,glofnd",
                      help="throughput modes; the first is the baseline")
  parser.add_argument("--budget-s", type=float, default=420,
                      help="skip the throughput phase if less than this remains of it")
  parser.add_argument("--phases", default=",".join(PHASES),
                      help="comma-separated phases to run: " + ", ".join(PHASES))
  parser.add_argument("--state-steps", type=int, default=20,
                      help="steps per timed block in the N-scaling step timing")
  parser.add_argument("--state-repeats", type=int, default=7,
                      help="interleaved blocks per N in the N-scaling step timing")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  selected = args.phases.split(",")
  unknown = sorted(set(selected) - set(PHASES))
  if unknown:
    parser.error(f"--phases: unknown {unknown}; choose from {', '.join(PHASES)}")
  out = common.output_path(args.out, "gpu_check_cpu_smoke" if args.cpu_smoke else "gpu_check",
                           quick=False)
  log = lambda line: print(f"[gpu_check {time.time() - started:5.0f} s] {line}", flush=True)
  started = time.time()
  modes = args.modes.split(",")

  platform = jax.devices()[0].platform
  report = {"benchmark": "gpu_check", "cpu_smoke": args.cpu_smoke, "ok": False,
            "environment": environment(), "errors": {}}
  common.write_json(report, out)
  log(f"devices: {jax.devices()}")
  if platform != "gpu" and not args.cpu_smoke:
    report["errors"]["environment"] = (f"no GPU: jax sees platform {platform!r}. Install a CUDA "
                                       "build of jax, or pass --cpu-smoke to test the script.")
    common.write_json(report, out)
    print(report["errors"]["environment"], file=sys.stderr)
    return report

  if args.cpu_smoke:
    sizes = dict(big_n=10**5, small_n=10**3, batch=16, steps=2, repeats=2)
    throughput = dict(model_name="small_cnn",
                      model_kwargs=dict(dtype="bfloat16", widths=(4, 4, 4), feature_dim=16,
                                        proj_dim=16, proj_hidden_dim=16),
                      image_size=8, batch=8, num_samples=1000, modes=modes[:2], steps=1,
                      repeats=2)
    jpeg_train = dict(images=24, size=16, batch=8, steps=1, repeats=1,
                      model=dict(name="small_cnn"))
  else:
    sizes = dict(big_n=10**8, small_n=10**4, batch=256, steps=args.state_steps,
                 repeats=args.state_repeats)
    throughput = dict(model_name="resnet50",
                      model_kwargs=dict(dtype="bfloat16", stem="imagenet", proj_dim=128,
                                        proj_hidden_dim=2048),
                      image_size=224, batch=256, num_samples=IMAGENET_SIZE, modes=modes,
                      steps=10, repeats=6)
    # The paper's batch 128 on the paper's model; enough JPEGs for a few epochs of blocks.
    jpeg_train = dict(images=1536, size=224, batch=128, steps=10, repeats=3,
                      model=dict(name="resnet50", stem="imagenet", dtype="bfloat16",
                                 proj_hidden_dim=2048))
  augmented = {k: throughput[k] for k in ("model_name", "model_kwargs", "image_size", "batch",
                                          "num_samples")}
  augmented.update(steps=throughput["steps"], repeats=max(2, throughput["repeats"] // 2),
                   objective=objective_config(0.01))

  phases = {"state_1e8": lambda: state_phase(**sizes, log=log),
            "throughput": lambda: throughput_phase(**throughput, log=log),
            "augmented": lambda: gpu_check_input.augmented_phase(**augmented, log=log),
            "jpeg_train": lambda: gpu_check_input.jpeg_train_phase(**jpeg_train, log=log)}
  phases = [(name, phases[name]) for name in selected]
  for name, phase in phases:
    if name != "state_1e8" and time.time() - started > args.budget_s:
      report["errors"][name] = f"skipped: {time.time() - started:.0f} s already spent"
      continue
    try:
      report[name] = phase()
    except Exception as error:  # noqa: BLE001 - keep the other phase's result
      report["errors"][name] = f"{type(error).__name__}: {error}"
      traceback.print_exc()
    report["wall_s"] = time.time() - started
    common.write_json(report, out)
  report["ok"] = not report["errors"]

  summary = {"ok": report["ok"], "device": report["environment"]["device"],
             "errors": report["errors"]}
  if "state_1e8" in report:
    s = report["state_1e8"]
    summary.update(state_N=s["N"], state_bytes_per_sample=s["state_bytes_per_sample"],
                   state_GB=s["state_bytes"] / 1e9,
                   device_GB_added=None if s["device_bytes_added"] is None
                   else s["device_bytes_added"] / 1e9,
                   step_time_N_big_over_small=s["big_over_small_step_time"],
                   step_time_N_big_over_small_iqr=s["big_over_small_step_time_iqr"],
                   median_step_ms_N_big_over_small=s["big_over_small_median_ms"])
  if "throughput" in report:
    t = report["throughput"]
    base = t["baseline"]
    for mode, entry in t["modes"].items():
      summary[f"images_per_s[{mode}]"] = entry["images_per_s_median"]
      if mode != base:
        ratio = entry["ratio_to_" + base]
        summary[f"step_time_ratio[{mode}/{base}]"] = {k: ratio[k] for k in ("median", "min",
                                                                            "max")}
  if "augmented" in report:
    for mode, entry in report["augmented"]["modes"].items():
      summary[f"images_per_s[{mode}]"] = entry["images_per_s_median"]
  if "jpeg_train" in report:
    j = report["jpeg_train"]
    summary.update(jpeg_train_images_per_s={k: j[k]["median"] for k in ("real", "synthetic")},
                   jpeg_train_real_over_synthetic=j["real_over_synthetic"]["median"])
  report["summary"] = summary
  report["wall_s"] = time.time() - started
  common.write_json(report, out)
  print("GPU_CHECK_SUMMARY " + json.dumps(summary))
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
