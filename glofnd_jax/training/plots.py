"""PNG plots of a run, drawn from ``metrics.jsonl`` and the lambda snapshots in the work dir.

* ``loss.png``: training loss per logged step.
* ``kept_fraction.png``: fraction of negatives kept by the mask (and flagged by the detector).
* ``fn_precision_recall.png``: precision and recall of the flags against labels (if logged).
* ``lambda_histogram.png``: the distribution of lambda at each snapshot epoch (one line each).
"""

from __future__ import annotations

import os
import pathlib
import zipfile

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from glofnd_jax.training.metrics import read_metrics  # noqa: E402

LAMBDA_BINS = np.linspace(-1.0, 1.0, 81)


def lambda_histogram(lam) -> np.ndarray:
  """Counts of ``lam`` in :data:`LAMBDA_BINS` (80 bins over [-1, 1])."""
  return np.histogram(np.asarray(lam), bins=LAMBDA_BINS)[0]


def save_lambda_snapshot(workdir, epoch: int, lam) -> None:
  """Append lambda's histogram at ``epoch`` to ``workdir/lambda_snapshots.npz``.

  Entries at ``epoch`` or later (left by an interrupted run that is now resumed) are replaced,
  and the file is rewritten atomically (tmp + rename); an unreadable file (torn by a kill before
  this was atomic) is moved aside to ``lambda_snapshots.npz.corrupt`` and started afresh.
  """
  path = pathlib.Path(workdir) / "lambda_snapshots.npz"
  epochs, counts = [], []
  if path.exists():
    try:
      with np.load(path) as old:
        epochs, counts = list(old["epochs"]), list(old["counts"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
      print(f"{path} is unreadable ({type(error).__name__}: {error}); moved to "
            f"{path.name}.corrupt, snapshots start afresh.")
      os.replace(path, path.with_name(path.name + ".corrupt"))
  kept = [i for i, e in enumerate(epochs) if e < epoch]
  epochs = [epochs[i] for i in kept] + [epoch]
  counts = [counts[i] for i in kept] + [lambda_histogram(lam)]
  tmp = path.with_name("lambda_snapshots.tmp.npz")
  np.savez(tmp, epochs=np.array(epochs), counts=np.array(counts), bins=LAMBDA_BINS)
  os.replace(tmp, path)


def _series(rows, key):
  points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
  return ([p[0] for p in points], [p[1] for p in points]) if points else None


def _line_plot(path, rows, keys, title, ylabel):
  series = {k: _series(rows, k) for k in keys}
  series = {k: v for k, v in series.items() if v}
  if not series:
    return None
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for key, (x, y) in series.items():
    ax.plot(x, y, label=key)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if len(series) > 1:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_run(workdir) -> list[pathlib.Path]:
  """Draw every plot the run's files allow; returns the PNG paths written."""
  workdir = pathlib.Path(workdir)
  rows = read_metrics(workdir)
  written = [
      _line_plot(workdir / "loss.png", rows, ["loss"], "training loss", "loss"),
      _line_plot(workdir / "kept_fraction.png", rows, ["kept_fraction", "flagged_fraction"],
                 "negatives kept by the mask / flagged by the detector", "fraction"),
      _line_plot(workdir / "fn_precision_recall.png", rows, ["fn_precision", "fn_recall"],
                 "false-negative flags vs labels", "fraction"),
  ]
  snapshots = workdir / "lambda_snapshots.npz"
  if snapshots.exists():
    data = np.load(snapshots)
    centers = 0.5 * (data["bins"][1:] + data["bins"][:-1])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = plt.cm.viridis(np.linspace(0, 1, len(data["epochs"])))
    for epoch, counts, color in zip(data["epochs"], data["counts"], colors):
      ax.plot(centers, counts / max(counts.sum(), 1), color=color, label=f"epoch {int(epoch)}")
    ax.set_xlabel("lambda")
    ax.set_ylabel("fraction of samples")
    ax.set_title("lambda over training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(workdir / "lambda_histogram.png", dpi=100)
    plt.close(fig)
    written.append(workdir / "lambda_histogram.png")
  return [p for p in written if p is not None]
