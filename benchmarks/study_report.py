"""The statistics and report of a study (``quality_study.py``): per-seed metrics, tests, tables.

Each run's results give one value per metric of ``METRICS`` (None where the run did not measure
it). Per arm: mean and sample std over seeds. Per comparison ``a vs b`` and metric: the mean
difference over seeds, Welch's t-test and the paired t-test (seeds pair the runs: same network
initialisation and data order); the paired p-values of the ``FAMILY`` metrics over all
comparisons form one family, Holm-Bonferroni adjusted. Then the bar plot and the markdown tables
that BENCHMARKS.md quotes. Nothing here trains or knows about arms: the caller picks the pairs.
"""

from __future__ import annotations

import math
import pathlib

import common
import numpy as np

METRICS = {  # name -> (label, getter on a results dict)
    "knn_top1": ("kNN top-1", lambda r: r["knn"]["top1"]),
    "probe_100": ("probe 100%", lambda r: r["linear_probe"]["1"]["accuracy"]),
    "probe_10": ("probe 10%", lambda r: r["linear_probe"]["0.1"]["accuracy"]),
    "probe_2": ("probe 2%", lambda r: r["linear_probe"]["0.02"]["accuracy"]),
    "probe_1": ("probe 1%", lambda r: r["linear_probe"]["0.01"]["accuracy"]),
    "fn_precision_batch": ("FN precision (in-batch, last epoch)",
                           lambda r: r["meta"]["train_detector_last_epoch"].get("fn_precision")),
    "fn_recall_batch": ("FN recall (in-batch, last epoch)",
                        lambda r: r["meta"]["train_detector_last_epoch"].get("fn_recall")),
    "fn_precision_dataset": ("FN precision (s > lambda, all train pairs)",
                             lambda r: (r.get("false_negatives") or {}).get("precision")),
    "fn_recall_dataset": ("FN recall (s > lambda, all train pairs)",
                          lambda r: (r.get("false_negatives") or {}).get("recall")),
}
REPRESENTATION = ("knn_top1", "probe_100", "probe_10", "probe_2", "probe_1")
FAMILY = REPRESENTATION + ("fn_precision_batch", "fn_recall_batch")  # the tests reported


def metric_values(results: dict) -> dict:
  out = {}
  for name, (_, getter) in METRICS.items():
    try:
      value = getter(results)
    except (KeyError, TypeError):
      value = None
    out[name] = None if value is None or not math.isfinite(value) else float(value)
  return out


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


def summarize(per_mode: dict, pairs) -> tuple[dict, dict]:
  """Mean +- std per arm and metric, and the tests of each ``(a, b)`` of ``pairs``.

  Args:
    per_mode: ``{arm: [one {metric: value or None} per seed, in seed order]}``.
    pairs: the comparisons ``(a, b)`` (arms of ``per_mode``), tested as a minus b.

  Returns:
    ``(summary, comparisons)``: ``{arm: {metric: {"mean", "std", "n"} or None}}`` and
    ``{"a vs b": {metric: compare(...)}}``, whose ``FAMILY`` metrics also carry
    ``paired_p_holm``, Holm-adjusted over every comparison and metric of ``FAMILY`` at once.
  """
  summary = {}
  for mode, runs in per_mode.items():
    summary[mode] = {}
    for name in METRICS:
      values = [r[name] for r in runs if r[name] is not None]
      summary[mode][name] = ({"mean": float(np.mean(values)),
                              "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                              "n": len(values)} if values else None)
  comparisons = {}
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
  groups = [measured(summary, REPRESENTATION),
            measured(summary, ("fn_precision_batch", "fn_recall_batch", "fn_precision_dataset",
                               "fn_recall_dataset"))]
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
  low = min(100 * (summary[m][n] or {"mean": 1})["mean"] for m in modes for n in groups[0])
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


def measured(summary: dict, names) -> list[str]:
  """The metrics of ``names`` that some arm measured (a recipe's probes decide which exist)."""
  return [n for n in names if any(summary[arm][n] is not None for arm in summary)]


def print_tables(summary: dict, comparisons: dict) -> None:
  columns = measured(summary, METRICS)
  print(common.markdown_table(
      ["arm"] + [METRICS[n][0] for n in columns],
      [[arm] + [fmt(summary[arm][n]) for n in columns] for arm in summary]))
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
  print(f"{len(rows)} tests.")
