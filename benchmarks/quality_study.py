"""Representation quality on the digits by detection mode: none/fnd/glofnd/glofnd_shared/oracle.

SogCLR on the digits default (``configs/digits_sogclr_glofnd.py``), several seeds per mode. A seed
fixes the network initialisation and the data order, so runs of the same seed are paired across
modes. Per run: kNN top-1, linear probe at 100/10/2% labels (C chosen on the validation split),
and the false-negative precision/recall of the detector (in-batch, averaged over the last training
epoch, every mode; and, for the learned modes, of the rule ``s_ij > lambda_i`` over all pairs of
the training set).

Protocol:

1. Tuning (GloFND only, validation split only): a grid over ``alpha`` and the start epoch
   (``start_update_epoch = start_mask_epoch``) on tuning seeds disjoint from the test seeds; each
   run is evaluated with the validation split standing in for the test split (the probe then
   picks C on 10 % held out of train), so the test split is never read. The score is the mean of
   kNN top-1 and 100 %-label probe accuracy on validation, averaged over tuning seeds.
2. Test: every mode with the chosen ``alpha``/start (FND, the shared threshold and the oracle use
   the same start epoch; FND the same alpha), on seeds 0..S-1, evaluated on the test split.
3. Statistics: mean +- std per mode; for each metric and each comparison (every mode vs ``none``,
   ``glofnd`` vs ``fnd`` and vs ``glofnd_shared``), Welch's t-test and the paired t-test over seeds
   (scipy); the paired p-values are also Holm-Bonferroni adjusted over the family of all tests
   in the printed table.

Runs are cached: each run's work dir (default ``workdir/quality_study/``) keeps its
``results.json``, and a rerun reuses finished runs and resumes unfinished ones from their
checkpoints. Writes ``benchmarks/results/quality_study.json`` and ``quality_study.png``.

    python benchmarks/quality_study.py [--quick] [--seeds 5] [--modes ...] [--batch-size B]
        [--no-tune --alpha A --start E] [--out FILE] [--cache DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import pathlib
import tempfile
import time

import common
import numpy as np

from glofnd_jax.config.common import load_config_file
from glofnd_jax.evaluation import read_results
from glofnd_jax.training import loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_sogclr_glofnd.py"
MODES = ("none", "fnd", "glofnd", "glofnd_shared", "oracle")
ALPHAS = (0.02, 0.05, 0.1)
STARTS = (10, 20)
TUNING_SEEDS = (100, 101)
METRICS = {  # name -> (label, getter on a results dict)
    "knn_top1": ("kNN top-1", lambda r: r["knn"]["top1"]),
    "probe_100": ("probe 100%", lambda r: r["linear_probe"]["1"]["accuracy"]),
    "probe_10": ("probe 10%", lambda r: r["linear_probe"]["0.1"]["accuracy"]),
    "probe_2": ("probe 2%", lambda r: r["linear_probe"]["0.02"]["accuracy"]),
    "fn_precision_batch": ("FN precision (in-batch, last epoch)",
                           lambda r: r["meta"]["train_detector_last_epoch"].get("fn_precision")),
    "fn_recall_batch": ("FN recall (in-batch, last epoch)",
                        lambda r: r["meta"]["train_detector_last_epoch"].get("fn_recall")),
    "fn_precision_dataset": ("FN precision (s > lambda, all train pairs)",
                             lambda r: (r.get("false_negatives") or {}).get("precision")),
    "fn_recall_dataset": ("FN recall (s > lambda, all train pairs)",
                          lambda r: (r.get("false_negatives") or {}).get("recall")),
}
REPRESENTATION = ("knn_top1", "probe_100", "probe_10", "probe_2")
FAMILY = REPRESENTATION + ("fn_precision_batch", "fn_recall_batch")  # the tests reported


def load_config():
  return load_config_file(CONFIG)


def make_config(mode: str, seed: int, alpha: float, start: int, *, epochs: int | None,
                on_validation: bool, probe_fractions=None, batch_size: int | None = None):
  c = load_config()
  c.seed = seed
  if batch_size is not None:
    c.batch_size = batch_size  # the optimiser's lr scales with it (config's lr_scaling)
  c.glofnd.mode = mode
  c.glofnd.alpha = alpha
  c.glofnd.start_update_epoch = start
  c.glofnd.start_mask_epoch = start
  if epochs is not None:
    c.epochs = epochs
    c.optim.warmup_epochs = min(c.optim.warmup_epochs, max(epochs - 1, 0))
    c.checkpoint_every_steps = 10**6  # only the final checkpoint
  if on_validation:  # tuning: the validation split plays the test split; never read test
    c.data.test_split = c.data.val_split
    c.data.val_split = ""
  if probe_fractions is not None:
    c.eval.probe_fractions = tuple(probe_fractions)
  return c


def run_once(config, workdir: pathlib.Path, log) -> dict:
  """Train + evaluate (or reuse a finished run's ``results.json``)."""
  results_file = workdir / "results.json"
  if results_file.exists():
    return read_results(results_file)
  start = time.time()
  with contextlib.redirect_stdout(io.StringIO()) as captured:
    results = loop.train_and_evaluate(config, workdir)
  (workdir / "train_stdout.txt").write_text(captured.getvalue())
  log(f"  {workdir.name}: {time.time() - start:.0f} s, kNN {results['knn']['top1']:.4f}")
  return results


def metric_values(results: dict) -> dict:
  out = {}
  for name, (_, getter) in METRICS.items():
    try:
      value = getter(results)
    except (KeyError, TypeError):
      value = None
    out[name] = None if value is None or not math.isfinite(value) else float(value)
  return out


def tune(cache: pathlib.Path, *, alphas, starts, seeds, epochs, log, batch_size=None) -> dict:
  rows = []
  for alpha, start in itertools.product(alphas, starts):
    scores = []
    for seed in seeds:
      config = make_config("glofnd", seed, alpha, start, epochs=epochs, on_validation=True,
                           probe_fractions=(1.0,), batch_size=batch_size)
      results = run_once(config, cache / f"tune_a{alpha:g}_s{start}_seed{seed}", log)
      scores.append({"knn_top1": results["knn"]["top1"],
                     "probe_100": results["linear_probe"]["1"]["accuracy"]})
    score = float(np.mean([(s["knn_top1"] + s["probe_100"]) / 2 for s in scores]))
    rows.append({"alpha": alpha, "start_epoch": start, "val_score": score, "per_seed": scores})
    log(f"tuning alpha={alpha:g} start={start}: val score {score:.4f}")
  best = max(rows, key=lambda r: r["val_score"])  # ties: the first in grid order
  return {"grid": rows, "alpha": best["alpha"], "start_epoch": best["start_epoch"],
          "seeds": list(seeds), "criterion": "mean over tuning seeds of (kNN top-1 + "
          "100%-label probe accuracy) / 2 on the validation split"}


def compare(a: list, b: list) -> dict:
  """Welch and paired t-tests of a vs b (lists aligned by seed; None entries dropped pairwise)."""
  from scipy import stats
  pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
  out = {"n": len(pairs), "mean_difference": None, "welch_p": None, "paired_p": None}
  if not pairs:
    return out
  x, y = np.array(pairs).T
  out["mean_difference"] = float(np.mean(x - y))
  if len(pairs) >= 2:
    welch = stats.ttest_ind(x, y, equal_var=False).pvalue
    paired = stats.ttest_rel(x, y).pvalue
    out["welch_p"] = None if not np.isfinite(welch) else float(welch)
    out["paired_p"] = None if not np.isfinite(paired) else float(paired)
  return out


def holm(p_values: dict) -> dict:
  """Holm-Bonferroni adjusted p-values of a family ``{test name: p}`` (None entries skipped)."""
  items = sorted((p, name) for name, p in p_values.items() if p is not None)
  adjusted, running = {}, 0.0
  for rank, (p, name) in enumerate(items):
    running = max(running, min(1.0, (len(items) - rank) * p))
    adjusted[name] = running
  return adjusted


def summarize(per_mode: dict) -> tuple[dict, dict]:
  summary = {}
  for mode, runs in per_mode.items():
    summary[mode] = {}
    for name in METRICS:
      values = [r[name] for r in runs if r[name] is not None]
      summary[mode][name] = ({"mean": float(np.mean(values)),
                              "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                              "n": len(values)} if values else None)
  comparisons = {}
  pairs = [(m, "none") for m in per_mode if m != "none" and "none" in per_mode]
  pairs += [("glofnd", other) for other in ("fnd", "glofnd_shared")
            if "glofnd" in per_mode and other in per_mode]
  for a, b in pairs:
    comparisons[f"{a} vs {b}"] = {
        name: compare([r[name] for r in per_mode[a]], [r[name] for r in per_mode[b]])
        for name in METRICS}
  # One family: every comparison on the metrics of the printed table, paired p-values.
  family = {(c, m): tests[m]["paired_p"] for c, tests in comparisons.items() for m in FAMILY
            if tests[m]["mean_difference"] is not None}
  for (c, m), adjusted in holm(family).items():
    comparisons[c][m]["paired_p_holm"] = adjusted
  return summary, comparisons


def plot(summary: dict, path: pathlib.Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  modes = list(summary)
  groups = [REPRESENTATION, ("fn_precision_batch", "fn_recall_batch", "fn_precision_dataset",
                             "fn_recall_dataset")]
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1]})
  width = 0.8 / len(modes)
  for ax, names in zip(axes, groups):
    for k, mode in enumerate(modes):
      means = [100 * (summary[mode][n] or {}).get("mean", np.nan) for n in names]
      stds = [100 * (summary[mode][n] or {}).get("std", np.nan) for n in names]
      ax.bar(np.arange(len(names)) + (k - (len(modes) - 1) / 2) * width, means, width,
             yerr=stds, capsize=2, label=mode)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels([METRICS[n][0].replace(" (", "\n(") for n in names], fontsize=7)
    ax.set_ylabel("%")
  low = min(100 * (summary[m][n] or {"mean": 1})["mean"] for m in modes for n in REPRESENTATION)
  axes[0].set_ylim(max(0, low - 8), 100.5)
  axes[0].set_title("representation (mean +- std over seeds)")
  axes[1].set_title("false-negative detection")
  axes[1].legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def fmt(entry) -> str:
  return "-" if entry is None else f"{100 * entry['mean']:.2f} +- {100 * entry['std']:.2f}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="none and glofnd, 1 seed, 2 epochs, 10%% probe only, no tuning "
                           "(a smoke test)")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--no-tune", action="store_true",
                      help="skip tuning; use the config's alpha/start (or --alpha/--start)")
  parser.add_argument("--alpha", type=float, default=None)
  parser.add_argument("--start", type=int, default=None)
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--plot", type=pathlib.Path, default=None)
  parser.add_argument("--batch-size", type=int, default=None,
                      help="global batch instead of the config's 128 (default cache: "
                           "workdir/quality_study_b<B>)")
  parser.add_argument("--cache", type=pathlib.Path, default=None,
                      help="run work dirs (default workdir/quality_study; quick: a temp dir)")
  args = parser.parse_args(argv)
  out = common.output_path(args.out, "quality_study", args.quick)
  plot_path = args.plot or out.with_suffix(".png")
  started = time.time()
  log = lambda line: print(line, flush=True)

  with contextlib.ExitStack() as stack:
    if args.cache is not None:
      cache = args.cache
    elif args.quick:
      cache = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
    else:
      cache = ROOT / "workdir" / ("quality_study" if args.batch_size is None
                                  else f"quality_study_b{args.batch_size}")
    cache.mkdir(parents=True, exist_ok=True)
    base = load_config()
    if args.quick:
      modes, seeds, epochs = ("none", "glofnd"), (0,), 2
      alpha, start, tuning = base.glofnd.alpha, 1, None
      probe_fractions = (0.1,)  # the 100 % probe's fits dominate a short run's evaluation
    else:
      modes, seeds, epochs = tuple(args.modes.split(",")), tuple(range(args.seeds)), None
      probe_fractions = None
      if args.no_tune:
        tuning = None
        alpha = args.alpha if args.alpha is not None else base.glofnd.alpha
        start = args.start if args.start is not None else base.glofnd.start_mask_epoch
      else:
        log(f"tuning on validation: alpha in {ALPHAS}, start in {STARTS}, seeds {TUNING_SEEDS}")
        tuning = tune(cache, alphas=ALPHAS, starts=STARTS, seeds=TUNING_SEEDS, epochs=None,
                      log=log, batch_size=args.batch_size)
        alpha, start = tuning["alpha"], tuning["start_epoch"]
    log(f"test runs: modes {', '.join(modes)}, seeds {list(seeds)}, alpha {alpha:g}, "
        f"start epoch {start}")
    per_mode, raw = {}, {}
    for seed in seeds:  # seed-major: a partial study has every mode for its first seeds
      for mode in modes:
        config = make_config(mode, seed, alpha, start, epochs=epochs, on_validation=False,
                             probe_fractions=probe_fractions, batch_size=args.batch_size)
        values = metric_values(run_once(config, cache / f"{mode}_seed{seed}", log))
        if mode == "none":  # nothing is flagged: precision and recall are undefined, not 0
          values.update({name: None for name in METRICS if name.startswith("fn_")})
        per_mode.setdefault(mode, []).append(values)
        raw.setdefault(mode, []).append({"seed": seed, **values})

  summary, comparisons = summarize(per_mode)
  report = {"benchmark": "quality_study", "quick": args.quick, "machine": common.machine(),
            "config": str(CONFIG.relative_to(ROOT)), "epochs": epochs or base.epochs,
            "batch_size": args.batch_size or base.batch_size,
            "alpha": alpha, "start_epoch": start, "seeds": list(seeds), "tuning": tuning,
            "metrics": {name: label for name, (label, _) in METRICS.items()},
            "summary": summary, "runs": raw, "comparisons": comparisons,
            "wall_s": time.time() - started}
  common.write_json(report, out)
  plot(summary, plot_path, f"SogCLR on digits, batch {args.batch_size or base.batch_size}, "
       f"{len(seeds)} seed(s), alpha={alpha:g}, start epoch {start}")

  print(common.markdown_table(
      ["mode"] + [METRICS[n][0] for n in METRICS],
      [[mode] + [fmt(summary[mode][n]) for n in METRICS] for mode in summary]))
  print()
  rows = []
  p = lambda v: "-" if v is None else f"{v:.3f}"
  for name, per_metric in comparisons.items():
    for metric in FAMILY:
      test = per_metric[metric]
      if test["mean_difference"] is None:
        continue
      holm_p = test.get("paired_p_holm")
      rows.append([name, METRICS[metric][0], f"{100 * test['mean_difference']:+.2f}",
                   p(test["welch_p"]), p(test["paired_p"]), p(holm_p),
                   "yes" if holm_p is not None and holm_p < 0.05 else "no"])
  print(common.markdown_table(["comparison", "metric", "mean diff (pts)", "Welch p",
                               "paired p", "paired p, Holm", "significant (Holm, 0.05)"], rows))
  print(f"{len(rows)} tests. wrote {out} and {plot_path}")
  return report


if __name__ == "__main__":
  main()
