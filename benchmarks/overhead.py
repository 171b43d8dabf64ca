"""Step-time overhead of GloFND: SogCLR + GloFND vs SogCLR alone (detection mode ``none``).

Both steps are the real jitted train step (``glofnd_jax.training.step.make_unimodal_train_step``,
state donated) with the same model, optimiser, batch and random input views, compiled in the
same process; only the detection differs. Thresholds are active from the first step
(``start_update = start_mask = 0``), no labels are passed (no label diagnostics), and the views
are given directly (no on-device augmentation), so the measured difference is the detection:
the threshold gather/update/scatter, the mask and its diagnostics. Steps are timed in blocks,
the modes alternating order every repeat; the ratio is taken per repeat and summarised
(median, quartiles, min/max). Cases:

* ``digits``: the default config (``configs/digits_sogclr_glofnd.py``: small CNN, 8x8x1, B=128,
  N=1258).
* ``resnet18``: ``configs/cifar10_sogclr_glofnd.py`` (ResNet-18, CIFAR stem, 32x32x3, B=256,
  N=50000), modes ``none`` and ``glofnd`` only. On a 2-core CPU one step takes about a minute:
  blocks of one step, few repeats; the GPU script measures the large-model case properly.

Mode ``glofnd+qmetric`` (digits, full run) is GloFND with the optional ``batch_quantile_mean``
metric turned on (``glofnd.quantile_metric``: a ``top_k`` of the ``(2, B, 2B)`` similarity rows
every step, see ``step_timing.py``), to show what that diagnostic adds on top of the method.

Each block is timed by wall clock and by this process's CPU time (see ``step_timing.py``); on a
shared CPU the CPU-time ratio is the steadier of the two. Both are reported.

``objective``: the detection + loss alone (value and gradient w.r.t. the features, no network)
at each case's batch and projection size, for every mode, timed the same way. The difference to
mode ``none`` is the absolute cost GloFND adds to a step; divided by the case's measured step
time it gives the overhead to expect when the network dominates (ResNet-18 on this CPU, where
the measured ratio is mostly noise).

    python benchmarks/overhead.py [--quick] [--cases digits,resnet18] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import common
import step_timing

from glofnd_jax import models, sharding
from glofnd_jax.config import unimodal as unimodal_config
from glofnd_jax.config.common import load_config_file
from glofnd_jax.training import optim

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
CASES = {
    # name: (config file, image shape, dataset size N)
    "digits": ("digits_sogclr_glofnd.py", (8, 8, 1), 1258),
    "resnet18": ("cifar10_sogclr_glofnd.py", (32, 32, 3), 50_000),
}
TARGET = 1.02  # <= 2 % overhead


def load_config(name: str):
  return load_config_file(CONFIGS / name)


def run_case(name: str, modes, *, steps: int, repeats: int, batch: int | None = None) -> dict:
  config_file, image_shape, num_samples = CASES[name]
  c = load_config(config_file)
  batch = batch or c.batch_size
  model = models.get_model(c.model.name, **unimodal_config.model_kwargs(c))
  # A constant learning rate at the recipe's peak: the schedule does not change the step's cost.
  tx = optim.make_optimizer(c.optim.name, optim.scaled_lr(c.optim.lr, batch, c.optim.lr_scaling),
                            weight_decay=c.optim.weight_decay, momentum=c.optim.momentum)
  objective = unimodal_config.unimodal_objective_config(c)
  objective = dataclasses.replace(
      objective, thresholds=dataclasses.replace(objective.thresholds, start_update=0,
                                                start_mask=0))
  mesh = sharding.make_mesh()
  print(f"[{name}] compiling {', '.join(modes)} ({c.model.name}, batch {batch}, "
        f"{'x'.join(map(str, image_shape))}, N={num_samples})", flush=True)
  log = lambda line: print(f"[{name}] {line}", flush=True)
  runs = step_timing.build_modes(model, tx, objective, modes, batch=batch,
                                 image_shape=image_shape, num_samples=num_samples, mesh=mesh,
                                 warmup_steps=1 if steps == 1 else 2, progress=log)
  step_timing.interleaved(runs, steps=steps, repeats=repeats, progress=log)
  summary = step_timing.summarize(runs, baseline=modes[0])
  return {"case": name, "config": config_file, "model": c.model.name, "batch": batch,
          "image_shape": list(image_shape), "num_samples": num_samples,
          "steps_per_block": steps, "repeats": repeats, "baseline": modes[0],
          "alpha": objective.thresholds.alpha, "modes": summary}


def objective_cost(cases: list[dict], modes, *, steps: int, repeats: int) -> dict:
  """Detection + loss alone at each case's shapes; added ms and implied overhead per mode."""
  out = {}
  for case in cases:
    c = load_config(case["config"])
    objective = unimodal_config.unimodal_objective_config(c)
    objective = dataclasses.replace(
        objective, thresholds=dataclasses.replace(objective.thresholds, start_update=0,
                                                  start_mask=0))
    dim, batch = c.model.proj_dim, case["batch"]
    runs = {mode: step_timing.build_objective_step(objective, mode, batch=batch, dim=dim,
                                                   num_samples=case["num_samples"])
            for mode in modes}
    step_timing.interleaved(runs, steps=steps, repeats=repeats)
    summary = step_timing.summarize(runs, baseline=modes[0])
    base_run = runs[modes[0]]
    base_step = case["modes"][case["baseline"]]
    for mode in modes[1:]:
      added = [t - b for t, b in zip(runs[mode].times, base_run.times)]
      added_cpu = [t - b for t, b in zip(runs[mode].cpu_times, base_run.cpu_times)]
      summary[mode]["added_ms"] = common.spread(added)
      summary[mode]["added_cpu_ms"] = common.spread(added_cpu)
      summary[mode]["implied_step_ratio"] = (
          1 + summary[mode]["added_ms"]["median"] / base_step["ms_per_step"]["median"])
      summary[mode]["implied_step_ratio_cpu"] = (
          1 + summary[mode]["added_cpu_ms"]["median"] / base_step["cpu_ms_per_step"]["median"])
    out[case["case"]] = {"batch": batch, "dim": dim, "num_samples": case["num_samples"],
                         "steps_per_block": steps, "repeats": repeats, "baseline": modes[0],
                         "modes": summary}
    print(f"[objective] {case['case']}: " + ", ".join(
        f"{m} +{summary[m]['added_ms']['median']:.2f} ms" for m in modes[1:]), flush=True)
  return out


def plot(report: dict, path: pathlib.Path) -> None:
  """Per-repeat step-time ratios to the baseline (wall and CPU), one panel per case."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cases = report["cases"]
  fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.8), squeeze=False)
  for ax, case in zip(axes[0], cases):
    base = case["baseline"]
    data, labels = [], []
    for mode, entry in case["modes"].items():
      if mode == base:
        continue
      cpu = [t / b for t, b in zip(entry["cpu_times_ms"], case["modes"][base]["cpu_times_ms"])
             if b > 0]
      data += [entry["ratios"], cpu]
      labels += [f"{mode}\nwall", f"{mode}\nCPU"]
    ax.boxplot(data, whis=(0, 100))
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels(labels, fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(report["target_ratio"], color="C3", ls="--", lw=0.8, label="target 1.02")
    ax.set_ylabel(f"step time / {base} (same repeat)")
    ax.set_title(f"{case['case']} (B={case['batch']}): {case['repeats']} repeats x "
                 f"{case['steps_per_block']} steps", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(report: dict) -> str:
  """The results table (wall-clock and CPU-time ratios to the baseline)."""
  rows = []
  for case in report["cases"]:
    base = case["baseline"]
    for mode, entry in case["modes"].items():
      if mode == base:
        continue
      wall, cpu = entry["ratio_to_" + base], entry["cpu_ratio_to_" + base]
      rows.append([case["case"], case["batch"], f"{mode} / {base}",
                   f"{entry['ms_per_step']['median']:.1f} / "
                   f"{case['modes'][base]['ms_per_step']['median']:.1f}",
                   f"{wall['median']:.3f} ({wall['q1']:.3f}-{wall['q3']:.3f}; "
                   f"{wall['min']:.3f}-{wall['max']:.3f})",
                   f"{cpu['median']:.3f} ({cpu['q1']:.3f}-{cpu['q3']:.3f}; "
                   f"{cpu['min']:.3f}-{cpu['max']:.3f})",
                   f"{case['repeats']} x {case['steps_per_block']}",
                   ("yes" if entry["meets_target"] else "no") + " / "
                   + ("yes" if entry["meets_target_cpu"] else "no")])
  table = common.markdown_table(
      ["case", "batch", "modes", "wall ms/step (medians)",
       "wall-time ratio: median (IQR; min-max)", "CPU-time ratio: median (IQR; min-max)",
       "repeats x steps", "<= 1.02 (wall / CPU median)"], rows)
  rows = []
  for name, entry in (report.get("objective") or {}).items():
    base = entry["baseline"]
    for mode, values in entry["modes"].items():
      if mode == base:
        continue
      added, cpu = values["added_ms"], values["added_cpu_ms"]
      rows.append([name, f"B={entry['batch']}, d={entry['dim']}", f"{mode} - {base}",
                   f"{values['ms_per_step']['median']:.2f} / "
                   f"{entry['modes'][base]['ms_per_step']['median']:.2f}",
                   f"{added['median']:+.2f} ({added['q1']:+.2f} to {added['q3']:+.2f})",
                   f"{cpu['median']:+.2f} ({cpu['q1']:+.2f} to {cpu['q3']:+.2f})",
                   f"{values['implied_step_ratio']:.4f} / {values['implied_step_ratio_cpu']:.4f}"])
  if rows:
    table += "\n\n" + common.markdown_table(
        ["objective at the shapes of", "shape", "modes", "wall ms (medians)",
         "added wall ms: median (IQR)", "added CPU ms: median (IQR)",
         "implied step ratio (wall / CPU)"], rows)
  return table


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="digits only, few short blocks (about 20 s; a smoke test, not a result)")
  parser.add_argument("--cases", default=None, help="comma-separated: digits,resnet18")
  parser.add_argument("--modes", default=None,
                      help="comma-separated detection modes; the first is the baseline "
                           "(default none,glofnd,glofnd+qmetric; quick: none,glofnd)")
  parser.add_argument("--digits-steps", type=int, default=None, help="steps per timed block")
  parser.add_argument("--digits-repeats", type=int, default=None)
  parser.add_argument("--resnet-modes", default="none,glofnd",
                      help="modes of the resnet18 case (a CPU step takes a minute)")
  parser.add_argument("--resnet-steps", type=int, default=1)
  parser.add_argument("--resnet-repeats", type=int, default=5)
  parser.add_argument("--objective-repeats", type=int, default=None,
                      help="repeats of the detection + loss alone (0: skip)")
  parser.add_argument("--merge", action="store_true",
                      help="keep the cases of an existing --out file that this run does not redo")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  modes = (args.modes or ("none,glofnd" if args.quick else "none,glofnd,glofnd+qmetric")).split(",")
  cases = (args.cases or ("digits" if args.quick else "digits,resnet18")).split(",")
  out = common.output_path(args.out, "overhead", args.quick)

  started = time.time()
  report = {"benchmark": "overhead", "quick": args.quick, "machine": common.machine(),
            "target_ratio": TARGET, "cases": []}
  kept, previous = [], {}
  if args.merge and out.exists():
    previous = json.loads(out.read_text())
    kept = [case for case in previous.get("cases", []) if case["case"] not in cases]
    report["merged_from_previous_run"] = [case["case"] for case in kept]
    report["previous_machine"] = previous.get("machine")
  for name in cases:
    if name == "digits":
      steps = args.digits_steps or (4 if args.quick else 5)
      repeats = args.digits_repeats or (4 if args.quick else 120)
      case_modes = modes
    elif name == "resnet18":
      steps, repeats = args.resnet_steps, (2 if args.quick else args.resnet_repeats)
      case_modes = args.resnet_modes.split(",")
    else:
      sys.exit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
    result = run_case(name, case_modes, steps=steps, repeats=repeats)
    for mode in case_modes[1:]:
      entry = result["modes"][mode]
      entry["meets_target"] = entry["ratio_to_" + case_modes[0]]["median"] <= TARGET
      cpu = entry["cpu_ratio_to_" + case_modes[0]]
      entry["meets_target_cpu"] = None if cpu is None else cpu["median"] <= TARGET
    report["cases"].append(result)
    common.write_json(report, out)  # keep what is done if a later case is interrupted
  report["cases"] = sorted(report["cases"] + kept, key=lambda case: list(CASES).index(case["case"]))
  objective_repeats = args.objective_repeats
  if objective_repeats is None:
    objective_repeats = 5 if args.quick else 100
  if objective_repeats:
    report["objective"] = objective_cost(report["cases"], modes, steps=5,
                                         repeats=objective_repeats)
  elif args.merge and out.exists() and "objective" in previous:
    report["objective"] = previous["objective"]  # not redone: keep the last run's table
  report["wall_s"] = time.time() - started
  common.write_json(report, out)
  plot(report, out.with_suffix(".png"))

  print(markdown(report))
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
