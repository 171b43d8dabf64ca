"""Evaluation results: one dict, written as ``results.json`` and printed as a plain-text table.

Both evaluators (:mod:`~glofnd_jax.evaluation.unimodal`, :mod:`~glofnd_jax.evaluation.image_text`)
build it with :func:`build_results` and publish it with :func:`write_and_print`; the one table
formatter, :func:`format_table`, prints whichever sections the dict has (image-text sections
with a chance column).

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

* ``"retrieval"``, ``"zero_shot"`` (image-text runs): see ``docs/BIMODAL.md``
  (:func:`~glofnd_jax.evaluation.retrieval.retrieval`,
  :func:`~glofnd_jax.evaluation.zero_shot.zero_shot`).

* ``"false_negatives"``: the threshold rule ``s_ij > lam_i`` as a false-negative detector,
  judged by class labels over all ordered pairs i != j
  (:func:`~glofnd_jax.evaluation.false_negatives.false_negative_precision_recall`). For an
  image-text run, ``{"image": entry, "text": entry}`` (image and text anchors), each entry with
  these keys:

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

* ``"meta"``: free-form context from the caller (e.g. epoch, step, config name, alpha), with
  ``train_detector_last_epoch`` (:func:`last_epoch_detector`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np

from glofnd_jax.training.metrics import detector_prefix, read_metrics

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
                  transfer: dict | None = None, retrieval: dict | None = None,
                  zero_shot: dict | None = None, false_negatives: dict | None = None,
                  lambda_error: dict | None = None, meta: dict | None = None) -> dict:
  """The results dict (JSON-ready), with only the sections given. Keys: see the module docstring."""
  sections = {"knn": knn, "linear_probe": linear_probe, "transfer": transfer,
              "retrieval": retrieval, "zero_shot": zero_shot,
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


def write_and_print(results: dict, workdir: str | os.PathLike) -> None:
  """On process 0 only: writes ``workdir/results.json`` and prints :func:`format_table`."""
  if jax.process_index() == 0:
    write_results(results, workdir)
    print(format_table(results))


def last_epoch_detector(workdir: str | os.PathLike, steps_per_epoch: int, *,
                        sides: tuple[str, ...] = ("img",), name_sides: bool = False) -> dict:
  """The in-training detector's metrics averaged over the last logged epoch.

  Args:
    workdir: the run directory holding ``metrics.jsonl``.
    steps_per_epoch: the width of the window, in steps, ending at the last row considered.
    sides: the detectors whose ``detector/<side>/...`` metrics are read (``("img", "txt")`` for
      an image-text run); rows that log ``detector/<sides[0]>/kept_fraction`` are considered.
    name_sides: key the result ``img/fn_precision``, ... instead of ``fn_precision``.

  Returns:
    ``{name: mean}`` for ``name`` in fn_precision, fn_recall, kept_fraction, flagged_fraction
    (those the rows have); steps where a value is undefined (NaN: nothing flagged) are left
    out of its mean, and a value undefined at every step is NaN (``null`` in JSON). ``{}`` when
    no row logs the detector.
  """
  present = detector_prefix(sides[0]) + "kept_fraction"
  rows = [r for r in read_metrics(workdir) if present in r]
  tail = [r for r in rows if r["step"] > rows[-1]["step"] - steps_per_epoch] if rows else []
  out = {}
  for side in sides if tail else ():
    for name in ("fn_precision", "fn_recall", "kept_fraction", "flagged_fraction"):
      key = detector_prefix(side) + name
      if key in tail[0]:
        values = np.array([r[key] for r in tail], np.float64)
        defined = values[~np.isnan(values)]
        out[f"{side}/{name}" if name_sides else name] = (float(np.mean(defined)) if defined.size
                                                         else math.nan)
  return out


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


# Each section's rows are (name, value, chance): chance is None for the sections without one
# (the unimodal ones) and a string, possibly empty, for the image-text ones.


def _unimodal_rows(results: dict) -> list[tuple]:
  rows = []
  knn = results.get("knn")
  if knn:
    settings = f"k={knn.get('k')}, T={knn.get('temperature'):g}"
    rows.append((f"kNN top-1 ({settings})", _percent(knn.get("top1")), None))
    if "top5" in knn:
      rows.append((f"kNN top-5 ({settings})", _percent(knn.get("top5")), None))
  for entry in (results.get("linear_probe") or {}).values():
    name = f"Linear probe, {_fraction_label(entry['label_fraction'])} ({_probe_detail(entry)})"
    rows.append((name, _percent(entry.get("accuracy")), None))
  for name, entry in (results.get("transfer") or {}).items():
    rows.append((f"Transfer to {name} ({_probe_detail(entry)})", _percent(entry.get("accuracy")),
                 None))
  return rows


def _image_text_rows(results: dict) -> list[tuple]:
  rows = []
  zs = results.get("zero_shot")
  if zs:
    rows.append((f"Zero-shot top-1 ({zs['num_classes']} classes, {zs['num_images']} images)",
                 _percent(zs["top1"]), _percent(zs["chance_top1"])))
    if "top5" in zs:
      rows.append(("Zero-shot top-5", _percent(zs["top5"]), _percent(zs["chance_top5"])))
  rt = results.get("retrieval")
  if rt:
    for direction, label in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
      entry = rt[direction]
      for key in entry:
        if key.startswith("R@"):
          rows.append((f"{label} {key} ({entry['num_queries']} queries, {entry['num_gallery']} "
                       "candidates)", _percent(entry[key]), _percent(entry["chance"][key])))
      rows.append((f"{label} median rank", f"{entry['median_rank']:g}",
                   f"{entry['chance']['median_rank']:g}"))
  return rows


def _false_negative_rows(fn: dict | None) -> list[tuple]:
  if not fn:
    return []
  if "precision" in fn:  # one detector (unimodal)
    return [("FN precision", _percent(fn.get("precision")), None),
            ("FN recall", _percent(fn.get("recall")), None),
            ("FN flagged pairs", f"{fn.get('num_flagged')} of {fn.get('num_pairs')} "
             f"({_percent(fn.get('flagged_fraction'))})", None)]
  rows = []  # one per anchor modality (image-text)
  for side, entry in fn.items():
    rows.append((f"FN precision, {side} anchors (lambda rule, train)",
                 _percent(entry["precision"]), ""))
    rows.append((f"FN recall, {side} anchors", _percent(entry["recall"]), ""))
    rows.append((f"FN flagged pairs, {side} anchors", _percent(entry["flagged_fraction"]), ""))
  return rows


def _lambda_and_temperature_rows(results: dict) -> list[tuple]:
  rows = []
  error = results.get("lambda_error")
  if error:
    for key, label in (("mean_abs_error", "mean |lam - exact|"),
                       ("median_abs_error", "median |lam - exact|"),
                       ("max_abs_error", "max |lam - exact|"),
                       ("mean_error", "mean (lam - exact)")):
      value = error.get(key)
      rows.append((f"Lambda {label}", "n/a" if value is None else f"{value:.4f}", None))
  meta = results.get("meta") or {}
  if "temperature" in meta:
    rows.append(("Temperature (final)", f"{meta['temperature']:.4f}", ""))
  return rows


def format_table(results: dict) -> str:
  """A plain-text table of whatever sections ``results`` holds.

  Two columns (metric, value); with any image-text section (zero-shot, retrieval, per-modality
  false negatives, the learned temperature) a third, the chance level, and the title says CLIP.
  """
  results = _to_jsonable(results)
  rows = (_unimodal_rows(results) + _image_text_rows(results)
          + _false_negative_rows(results.get("false_negatives"))
          + _lambda_and_temperature_rows(results))
  if not rows:
    return "No evaluation results."
  width = max(len(name) for name, _, _ in rows)
  value_width = max(len(value) for _, value, _ in rows)
  if all(chance is None for _, _, chance in rows):
    rule = "-" * (width + 2 + value_width)
    lines = ["Evaluation results", rule]
    lines += [f"{name:<{width}}  {value:>{value_width}}" for name, value, _ in rows]
  else:
    rule = "-" * (width + value_width + 14)
    lines = ["Evaluation results (CLIP)", rule,
             f"{'':<{width}}  {'value':>{value_width}}  {'chance':>10}", rule]
    lines += [f"{name:<{width}}  {value:>{value_width}}  {chance or '':>10}"
              for name, value, chance in rows]
  lines.append(rule)
  return "\n".join(lines)
