"""Metric logging: one JSON line per logged step (``metrics.jsonl``) and TensorBoard events.

Only process 0 writes. Values are converted to Python floats on the host at log time (the
train loop calls :meth:`write` every ``log_every_steps``, so the device is synchronised rarely).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np


class MetricWriter:

  def __init__(self, workdir, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = self.path.open("a")
      if tensorboard:
        from tensorboardX import SummaryWriter  # no TensorFlow needed
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> dict:
    """Log scalar ``metrics`` at ``step``; returns them as floats."""
    values = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
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


def read_metrics(workdir) -> list[dict]:
  """All rows of ``workdir/metrics.jsonl``."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
