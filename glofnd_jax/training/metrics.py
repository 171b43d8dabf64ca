"""Metric logging: one JSON line per logged step (``metrics.jsonl``) and TensorBoard events.

Only process 0 writes. Values are converted to Python floats on the host at log time (the
train loop calls :meth:`write` every ``log_every_steps``, so the device is synchronised rarely).

Logged names are namespaced (:func:`logged_name`), the same in ``metrics.jsonl`` and TensorBoard:

* ``train/...``: the optimisation (``loss``, ``lr``, ``grad_norm``, ``epoch``, ``u_mean``,
  ``logit_scale``, ``images_per_sec``, ``skipped_batches``, ...).
* ``detector/img/...``, ``detector/txt/...``: the false-negative detector of the image and the
  text anchors (a unimodal run has image anchors only): ``kept_fraction``, ``flagged_fraction``,
  ``lambda_mean``, ``fn_precision``, ``fn_recall``, ...; several alphas add ``@alpha``.
* ``nonfinite/...``: the step's non-finite flags (taken out before logging).
* ``eval/...``: the end-of-run evaluation (TensorBoard only, :func:`log_results`;
  ``results.json`` holds it all).

An undefined value (precision when nothing is flagged) is NaN, ``NaN`` in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import jax
import numpy as np


# The functional core's detector diagnostics (glofnd_jax.detection, glofnd_jax.treatments), which
# a unimodal objective returns unprefixed and an image-text one under ``img/`` and ``txt/``.
DETECTOR_METRICS = ("kept_fraction", "flagged_fraction", "fn_precision", "fn_recall",
                    "lambda_mean", "batch_quantile_mean", "weight_mean", "attracted_fraction")
DETECTOR_SIDES = ("img", "txt")
NAMESPACES = ("train/", "detector/", "nonfinite/", "eval/")


def logged_name(name: str) -> str:
  """The namespaced name under which step metric ``name`` is logged (see the module docstring)."""
  if name.startswith(NAMESPACES):
    return name
  if name.split("/", 1)[0] in DETECTOR_SIDES:
    return "detector/" + name
  if name.split("@", 1)[0] in DETECTOR_METRICS:
    return "detector/img/" + name
  return "train/" + name


def detector_prefix(side: str) -> str:
  """``"detector/img/"`` for ``side="img"``: the prefix of one detector's logged metrics."""
  return f"detector/{side}/"


def cut_metrics(path: pathlib.Path, last_step: int) -> None:
  """Keep the complete rows of ``path`` with ``step <= last_step`` (rewritten atomically).

  A resumed run logs again every step after its checkpoint, and a kill while writing leaves a
  torn last line; both are dropped here so the file equals an uninterrupted run's.
  """
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      row = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
      row = None
    if isinstance(row, dict) and row.get("step", last_step + 1) <= last_step:
      kept.append(line)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(kept))
  os.replace(tmp, path)


class MetricWriter:
  """Appends to ``workdir/metrics.jsonl`` and TensorBoard events.

  Args:
    workdir: the run directory.
    tensorboard: also write TensorBoard events.
    first_step: the step the run starts from (the restored checkpoint's, 0 when fresh): rows
      and TensorBoard events after it, left by an interrupted run, are dropped.
  """

  def __init__(self, workdir, *, tensorboard: bool = True, first_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if first_step is not None:
        cut_metrics(self.path, first_step)
      self._file = self.path.open("a")
      if tensorboard:
        from tensorboardX import SummaryWriter  # no TensorFlow needed
        # NaN is how an undefined value is logged on purpose; tensorboardX warns at each one.
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        # purge_step: TensorBoard discards the events of earlier files from that step on.
        purge = None if first_step is None else first_step + 1
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=purge)

  def write(self, step: int, metrics: dict) -> dict:
    """Log scalar ``metrics`` under their :func:`logged_name`; returns them (floats) by it."""
    values = {logged_name(k): float(np.asarray(v)) for k, v in metrics.items()
              if np.ndim(v) == 0}
    if self.enabled:
      self._file.write(json.dumps({"step": int(step), **values}) + "\n")
      self._file.flush()
      if self._tb is not None:
        for name, value in values.items():
          self._tb.add_scalar(name, value, int(step))
    return values

  def histogram(self, step: int, name: str, values) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_histogram(name, np.asarray(values), int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


def flat_numbers(results: dict, prefix: str = "eval/") -> dict[str, float]:
  """Every number of a nested ``results`` dict as ``{prefix + "a/b/c": value}`` (``meta`` and
  non-numbers left out; ``None``, an undefined value, becomes NaN)."""
  out = {}
  for key, value in results.items():
    if key == "meta" and prefix == "eval/":
      continue
    if isinstance(value, dict):
      out.update(flat_numbers(value, f"{prefix}{key}/"))
    elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
      out[f"{prefix}{key}"] = float("nan") if value is None else float(value)
  return out


def log_results(workdir, step: int, results: dict) -> None:
  """The end-of-run evaluation into TensorBoard as ``eval/...`` scalars at ``step`` (process 0;
  ``results.json`` stays the full record)."""
  if jax.process_index() != 0 or not results:
    return
  from tensorboardX import SummaryWriter
  with SummaryWriter(str(pathlib.Path(workdir) / "tensorboard")) as tb:
    for name, value in flat_numbers(results).items():
      tb.add_scalar(name, value, int(step))


def read_metrics(workdir) -> list[dict]:
  """All rows of ``workdir/metrics.jsonl`` (``NaN`` entries read as ``float('nan')``)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` of every scalar in the event files under ``logdir``.

  Reads the TFRecord framing directly (length, its CRC, the ``Event`` proto, its CRC; the CRCs
  are not checked), so neither TensorFlow nor the ``tensorboard`` package is needed.
  """
  from tensorboardX.proto import event_pb2
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset + 12 <= len(data):
      length = int.from_bytes(data[offset:offset + 8], "little")
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return scalars
