"""PNG plots of a run, drawn from ``metrics.jsonl`` and the lambda snapshots in the work dir.

Every curve is against the epoch (``step / steps_per_epoch``), with dashed markers at the
detection schedule's ``start_update`` and ``start_mask`` epochs. Metrics are read by their
namespace (:mod:`glofnd_jax.training.metrics`): ``train/...`` and ``detector/<side>/...`` for
each of the task's detector sides (``img``; image-text adds ``txt``, drawn as its own line).

* ``loss.png``: training loss.
* ``kept_fraction.png``: fraction of negatives kept by the mask (and flagged by the detector).
* ``fn_precision_recall.png``: precision and recall of the flags against labels (if logged);
  steps where a value is undefined (NaN: nothing flagged) are gaps, not zeros.
* ``lambda_histogram.png``: the distribution of lambda at each snapshot epoch (one line each),
  on the range the values occupy; image and text thresholds in separate panels.
* ``false_negatives.png`` (written by the evaluation, :func:`draw_false_negatives`): a few
  anchors, each beside its most similar flagged negatives and its most similar kept ones.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import textwrap
import zipfile

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from glofnd_jax.training.metrics import detector_prefix, read_metrics  # noqa: E402

# Fine bins (0.001 wide over lambda's range [-1, 1]): the plot re-bins them over the range the
# values occupy, which is often a few hundredths wide.
LAMBDA_BINS = np.linspace(-1.0, 1.0, 2001)
PLOT_BINS = 60
SIDE_NAMES = {"img": "image", "txt": "text"}
# The files of the module docstring: what :func:`plot_run` draws after training (each once its
# data is logged), and the evaluation's picture.
RUN_PLOTS = ("loss.png", "kept_fraction.png", "fn_precision_recall.png", "lambda_histogram.png")
FALSE_NEGATIVES_PLOT = "false_negatives.png"


def lambda_histogram(lam) -> np.ndarray:
  """Counts of ``lam`` in :data:`LAMBDA_BINS` (2000 bins over [-1, 1])."""
  return np.histogram(np.asarray(lam), bins=LAMBDA_BINS)[0]


def snapshot_path(workdir, side: str = "img") -> pathlib.Path:
  """``lambda_snapshots.npz`` (image anchors) or ``lambda_snapshots_<side>.npz``."""
  suffix = "" if side == "img" else f"_{side}"
  return pathlib.Path(workdir) / f"lambda_snapshots{suffix}.npz"


def _read_snapshots(path: pathlib.Path):
  """``(epochs, counts)`` lists of ``path`` (empty if absent); an unreadable file, or one with
  other bins, is moved aside to ``<name>.corrupt`` and reads as empty."""
  if not path.exists():
    return [], []
  try:
    with np.load(path) as old:
      if old["bins"].shape != LAMBDA_BINS.shape or not np.allclose(old["bins"], LAMBDA_BINS):
        raise ValueError("its bins are not this version's")
      return list(old["epochs"]), list(old["counts"])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
    print(f"{path} is unreadable ({type(error).__name__}: {error}); moved to "
          f"{path.name}.corrupt, snapshots start afresh.")
    os.replace(path, path.with_name(path.name + ".corrupt"))
    return [], []


def save_lambda_snapshot(workdir, epoch: int, lam, side: str = "img") -> None:
  """Append lambda's histogram at ``epoch`` to :func:`snapshot_path` of ``side``.

  Entries at ``epoch`` or later (left by an interrupted run that is now resumed) are replaced,
  and the file is rewritten atomically (tmp + rename); an unreadable file (torn by a kill before
  this was atomic) is moved aside to ``lambda_snapshots.npz.corrupt`` and started afresh.
  """
  path = snapshot_path(workdir, side)
  epochs, counts = _read_snapshots(path)
  kept = [i for i, e in enumerate(epochs) if e < epoch]
  epochs = [epochs[i] for i in kept] + [epoch]
  counts = [counts[i] for i in kept] + [lambda_histogram(lam)]
  tmp = path.with_name(path.stem + ".tmp.npz")
  np.savez(tmp, epochs=np.array(epochs), counts=np.array(counts), bins=LAMBDA_BINS)
  os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class PlotSpec:
  """What the plots need to know of the run besides its files.

  Attributes:
    steps_per_epoch: converts logged steps to epochs on the x-axis.
    sides: the detector sides logged (``("img",)``, image-text ``("img", "txt")``).
    start_update, start_mask: the detection schedule's epochs, marked on every curve (``None``
      for modes without a schedule).
  """

  steps_per_epoch: int
  sides: tuple[str, ...] = ("img",)
  start_update: int | None = None
  start_mask: int | None = None


def _series(rows, key, steps_per_epoch):
  """``(epochs, values)`` of ``key``; NaN (undefined) stays NaN, which matplotlib leaves as a
  gap in the line."""
  points = [(r["step"] / steps_per_epoch, r[key]) for r in rows if key in r]
  if not points:
    return None
  return (np.array([p[0] for p in points]),
          np.array([np.nan if p[1] is None else p[1] for p in points], np.float64))


def _mark_schedule(ax, spec: PlotSpec, x_max: float) -> None:
  """Dashed lines at the schedule's epochs inside the plotted range (one line when equal)."""
  by_epoch = {}
  for label, epoch in (("start_update", spec.start_update), ("start_mask", spec.start_mask)):
    if epoch is not None and epoch <= x_max:
      by_epoch.setdefault(epoch, []).append(label)
  for epoch, labels in by_epoch.items():
    ax.axvline(epoch, color="grey", linestyle="--", linewidth=0.8)
    ax.annotate(" = ".join(labels), (epoch, 1.0), xycoords=("data", "axes fraction"),
                rotation=90, va="top", ha="right", fontsize=7, color="grey")


def _line_plot(path, rows, curves, title, ylabel, spec: PlotSpec):
  """``curves`` maps a legend label to a logged key; keys never logged are left out."""
  series = {label: _series(rows, key, spec.steps_per_epoch) for label, key in curves.items()}
  series = {label: s for label, s in series.items() if s is not None}
  if not series:
    return None
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for label, (x, y) in series.items():
    ax.plot(x, y, label=label, marker="." if len(x) < 30 else None)
  _mark_schedule(ax, spec, max(float(x.max()) for x, _ in series.values()))
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if len(series) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _detector_curves(spec: PlotSpec, names: dict) -> dict:
  """Legend label -> logged key for every side (sides named only when there are several)."""
  curves = {}
  for side in spec.sides:
    for name, label in names.items():
      prefix = f"{SIDE_NAMES.get(side, side)} anchors: " if len(spec.sides) > 1 else ""
      curves[prefix + label] = detector_prefix(side) + name
  return curves


def occupied_range(counts: np.ndarray, bins: np.ndarray) -> tuple[float, float]:
  """``(lo, hi)`` of the bins holding any count in ``counts`` (one row per snapshot), widened
  to at least 0.02 so a collapsed distribution still shows as a peak."""
  occupied = np.flatnonzero(np.asarray(counts).sum(axis=0))
  if occupied.size == 0:
    return float(bins[0]), float(bins[-1])
  lo, hi = float(bins[occupied[0]]), float(bins[occupied[-1] + 1])
  if hi - lo < 0.02:
    middle = 0.5 * (lo + hi)
    lo, hi = middle - 0.01, middle + 0.01
  return lo, hi


def _lambda_panel(ax, data, title: str) -> None:
  epochs, counts, bins = data["epochs"], data["counts"], data["bins"]
  lo, hi = occupied_range(counts, bins)
  edges = np.linspace(lo, hi, PLOT_BINS + 1)
  centers = 0.5 * (bins[1:] + bins[:-1])
  colors = plt.cm.viridis(np.linspace(0, 1, len(epochs)))
  for epoch, row, color in zip(epochs, counts, colors):
    rebinned = np.histogram(centers, bins=edges, weights=row)[0]
    ax.plot(0.5 * (edges[1:] + edges[:-1]), rebinned / max(row.sum(), 1), color=color,
            label=f"epoch {int(epoch)}")
  ax.set_xlim(lo, hi)
  ax.set_xlabel("lambda")
  ax.set_ylabel("fraction of samples")
  ax.set_title(title)
  ax.legend(fontsize=7)


def _lambda_plot(workdir: pathlib.Path, spec: PlotSpec):
  present = [side for side in spec.sides if snapshot_path(workdir, side).exists()]
  if not present:
    return None
  fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 3.5), squeeze=False)
  for ax, side in zip(axes[0], present):
    with np.load(snapshot_path(workdir, side)) as data:
      title = "lambda over training"
      if len(spec.sides) > 1:
        title += f" ({SIDE_NAMES.get(side, side)} anchors)"
      _lambda_panel(ax, {k: data[k] for k in ("epochs", "counts", "bins")}, title)
  fig.tight_layout()
  path = workdir / "lambda_histogram.png"
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_run(workdir, spec: PlotSpec) -> list[pathlib.Path]:
  """Draw every plot the run's files allow; returns the PNG paths written."""
  workdir = pathlib.Path(workdir)
  rows = read_metrics(workdir)
  written = [
      _line_plot(workdir / "loss.png", rows, {"loss": "train/loss"}, "training loss", "loss",
                 spec),
      _line_plot(workdir / "kept_fraction.png", rows,
                 _detector_curves(spec, {"kept_fraction": "kept", "flagged_fraction": "flagged"}),
                 "negatives kept by the mask / flagged by the detector", "fraction", spec),
      _line_plot(workdir / "fn_precision_recall.png", rows,
                 _detector_curves(spec, {"fn_precision": "precision", "fn_recall": "recall"}),
                 "false-negative flags vs labels (gaps: nothing flagged)", "fraction", spec),
      _lambda_plot(workdir, spec),
  ]
  return [p for p in written if p is not None]


def _show_image(ax, image) -> None:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  else:
    ax.imshow(image, interpolation="nearest")


def _show_text(ax, text: str) -> None:
  ax.text(0.5, 0.5, textwrap.fill(text, 18), ha="center", va="center", fontsize=7,
          wrap=True, transform=ax.transAxes)


def draw_false_negatives(path, pairs, anchor_image, neighbour_image=None, neighbour_text=None,
                         *, title: str = "false negatives found by lambda") -> pathlib.Path | None:
  """One row per anchor: the anchor, its flagged negatives, then its kept ones.

  Args:
    path: the PNG to write.
    pairs: :class:`~glofnd_jax.evaluation.fn_examples.ExamplePair` rows grouped by anchor.
    anchor_image: ``index -> uint8 (H, W, C)`` image of an anchor.
    neighbour_image: ``index -> image`` of a candidate (same-modal runs), or
    neighbour_text: ``index -> caption`` of a candidate (image-text runs).
    title: the figure's title.

  Each candidate is captioned with ``s`` and the anchor's ``lambda`` and, when labels are known,
  "same class" (green) or "other class" (red). Returns ``path``, or None when there are no pairs
  (then ``path`` is removed: a picture of an earlier evaluation must not pass for this one's).
  """
  path = pathlib.Path(path)
  path.unlink(missing_ok=True)
  if not pairs:
    print(f"{path.name} not drawn: no anchor has a negative above its lambda.")
    return None
  anchors = list(dict.fromkeys(p.anchor for p in pairs))
  rows = {a: ([p for p in pairs if p.anchor == a and p.flagged],
              [p for p in pairs if p.anchor == a and not p.flagged]) for a in anchors}
  width = max(max(len(f) for f, _ in rows.values()), max(len(k) for _, k in rows.values()), 1)
  fig, axes = plt.subplots(len(anchors), 1 + 2 * width, squeeze=False,
                           figsize=(1.3 * (1 + 2 * width), 1.6 * len(anchors) + 0.4))
  for row, anchor in zip(axes, anchors):
    for ax in row:
      ax.axis("off")
    _show_image(row[0], anchor_image(anchor))
    row[0].set_title(f"anchor {anchor}", fontsize=7)
    flagged, kept = rows[anchor]
    for column, pair in [(1 + i, p) for i, p in enumerate(flagged)] + [
        (1 + width + i, p) for i, p in enumerate(kept)]:
      ax = row[column]
      if neighbour_text is not None:
        _show_text(ax, neighbour_text(pair.neighbour))
      else:
        _show_image(ax, neighbour_image(pair.neighbour))
      verdict = {True: ("same class", "green"), False: ("other class", "red")}.get(
          pair.same_class, ("", "black"))
      ax.set_title(f"{'flagged' if pair.flagged else 'kept'} s={pair.similarity:.3f}\n"
                   f"lambda={pair.lam:.3f}", fontsize=6)
      if verdict[0]:
        ax.text(0.5, -0.08, verdict[0], color=verdict[1], fontsize=6, ha="center", va="top",
                transform=ax.transAxes)
  fig.suptitle(f"{title}: flagged (s > lambda) | kept (s <= lambda)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
