"""Evaluation results: one dict, written as ``results.json`` and printed as a plain-text table.

``results.json`` holds one JSON object. Every section is optional (absent when not evaluated).
Accuracies, precisions, recalls and fractions are in [0, 1] (the table prints percentages).
A value that is undefined (NaN, e.g. precision when nothing is flagged) is written as ``null``.

* ``"knn"``: weighted kNN on frozen backbone features
  (:func:`~glofnd_jax.evaluation.knn.knn_classify`).

  - ``top1``: top-1 test accuracy.
  - ``top5``: top-5 test accuracy (only with at least 5 classes).
  - ``k``: neighbours used (the configured k, capped at the training-set size).
  - ``temperature``: T of the vote weights ``exp(s / T)``.
  - ``num_train``, ``num_test``: sizes of the reference (train) and query (test) sets.

* ``"linear_probe"``: logistic regression on frozen backbone features, one entry per label
  fraction, keyed by the fraction as ``f"{fraction:g}"`` (``"1"``, ``"0.1"``, ``"0.01"``)
  (:func:`~glofnd_jax.evaluation.linear_probe.linear_probe_fractions`). Each entry:

  - ``label_fraction``: the fraction of the training pool's labels used (class-balanced).
  - ``accuracy``: test accuracy of the model selected on validation.
  - ``num_labeled``: labelled training examples fitted.
  - ``num_val``: validation examples (held out from train, or given); ``num_test``: test examples.
  - ``c``: the chosen inverse regularisation strength; ``c_grid``: the values tried;
    ``val_accuracies``: validation accuracy per value of ``c_grid``; ``val_accuracy``: the
    chosen C's.
  - ``converged``: whether lbfgs converged for the chosen model.

* ``"transfer"``: ``{dataset name: entry}``, logistic regression on another dataset's frozen
  features; each entry has the keys of a ``linear_probe`` entry (``label_fraction`` is 1).

* ``"false_negatives"``: the threshold rule ``s_ij > lam_i`` as a false-negative detector,
  judged by class labels over all ordered pairs i != j
  (:func:`~glofnd_jax.evaluation.false_negatives.false_negative_precision_recall`).

  - ``precision``: flagged same-class pairs / flagged pairs.
  - ``recall``: flagged same-class pairs / same-class pairs.
  - ``num_flagged``, ``num_true_flagged``, ``num_same_class_pairs``, ``num_pairs``: the counts.
  - ``flagged_fraction``: ``num_flagged / num_pairs`` (GloFND aims at about alpha).

* ``"lambda_error"``: learned lambda against the exact dataset-wide (1 - alpha) quantile of
  each sample's similarities to all others, on un-augmented samples
  (:func:`~glofnd_jax.evaluation.quantile.lambda_error`).

  - ``mean_abs_error``, ``median_abs_error``, ``max_abs_error``: of ``|lam - exact|``.
  - ``mean_error``: mean of ``lam - exact`` (positive: lambda too high, too few pairs flagged).
  - ``num_samples``: samples compared.

* ``"meta"``: free-form context from the caller (e.g. epoch, step, config name, alpha).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import numpy as np

RESULTS_FILENAME = "results.json"


def _to_jsonable(value: Any) -> Any:
  """Plain JSON types: numpy scalars/arrays to Python, NaN and infinities to None."""
  if isinstance(value, dict):
    return {str(key): _to_jsonable(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_jsonable(item) for item in value]
  if isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype")):
    return _to_jsonable(np.asarray(value).tolist())
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  return value


def build_results(*, knn: dict | None = None, linear_probe: dict | None = None,
                  transfer: dict | None = None, false_negatives: dict | None = None,
                  lambda_error: dict | None = None, meta: dict | None = None) -> dict:
  """The results dict (JSON-ready), with only the sections given. Keys: see the module docstring."""
  sections = {"knn": knn, "linear_probe": linear_probe, "transfer": transfer,
              "false_negatives": false_negatives, "lambda_error": lambda_error, "meta": meta}
  return _to_jsonable({name: section for name, section in sections.items() if section is not None})


def write_results(results: dict, workdir: str | os.PathLike) -> pathlib.Path:
  """Writes ``workdir/results.json`` atomically (never half a file); returns its path."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / RESULTS_FILENAME
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(json.dumps(_to_jsonable(results), indent=2, allow_nan=False) + "\n")
  os.replace(temporary, path)
  return path


def read_results(path: str | os.PathLike) -> dict:
  """Reads a ``results.json`` (a file path, or a work directory holding one)."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / RESULTS_FILENAME
  return json.loads(path.read_text())


def _percent(value) -> str:
  return "n/a" if value is None else f"{100.0 * value:.2f}%"


def _fraction_label(fraction: float) -> str:
  return f"{100.0 * fraction:g}% labels"


def _probe_detail(entry: dict) -> str:
  return f"n={entry.get('num_labeled')}, C={entry.get('c'):g}" + (
      "" if entry.get("converged", True) else ", not converged")


def format_table(results: dict) -> str:
  """A plain-text, two-column table of whatever sections ``results`` holds."""
  results = _to_jsonable(results)
  rows = []
  knn = results.get("knn")
  if knn:
    settings = f"k={knn.get('k')}, T={knn.get('temperature'):g}"
    rows.append((f"kNN top-1 ({settings})", _percent(knn.get("top1"))))
    if "top5" in knn:
      rows.append((f"kNN top-5 ({settings})", _percent(knn.get("top5"))))
  for entry in (results.get("linear_probe") or {}).values():
    name = f"Linear probe, {_fraction_label(entry['label_fraction'])} ({_probe_detail(entry)})"
    rows.append((name, _percent(entry.get("accuracy"))))
  for name, entry in (results.get("transfer") or {}).items():
    rows.append((f"Transfer to {name} ({_probe_detail(entry)})", _percent(entry.get("accuracy"))))
  fn = results.get("false_negatives")
  if fn:
    rows.append(("FN precision", _percent(fn.get("precision"))))
    rows.append(("FN recall", _percent(fn.get("recall"))))
    rows.append(("FN flagged pairs",
                 f"{fn.get('num_flagged')} of {fn.get('num_pairs')} "
                 f"({_percent(fn.get('flagged_fraction'))})"))
  error = results.get("lambda_error")
  if error:
    for key, label in (("mean_abs_error", "mean |lam - exact|"),
                       ("median_abs_error", "median |lam - exact|"),
                       ("max_abs_error", "max |lam - exact|"),
                       ("mean_error", "mean (lam - exact)")):
      value = error.get(key)
      rows.append((f"Lambda {label}", "n/a" if value is None else f"{value:.4f}"))
  if not rows:
    return "No evaluation results."
  width = max(len(name) for name, _ in rows)
  value_width = max(len(value) for _, value in rows)
  rule = "-" * (width + 2 + value_width)
  lines = ["Evaluation results", rule]
  lines += [f"{name:<{width}}  {value:>{value_width}}" for name, value in rows]
  lines.append(rule)
  return "\n".join(lines)
