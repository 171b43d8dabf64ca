"""False-negative detection: which negatives a loss keeps, for every detection mode.

Modes:
  ``none``           keep every negative (plain contrastive loss).
  ``glofnd``         learned per-sample threshold lambda_i (GloFND); update, then mask.
  ``glofnd_shared``  one learned threshold for all samples (ablation).
  ``fnd``            the mini-batch (1 - alpha) quantile of each anchor's negatives (the FND
                     baseline: a batch estimate, no state).
  ``oracle``         negatives with the anchor's label are removed (needs labels).

A negative is kept when ``s <= threshold`` (ties are kept); the positive and the anchor itself
are never kept and never flagged. Before ``start_mask`` every negative is kept, but the detector
still runs (its flags are reported as diagnostics).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from glofnd_jax import thresholds as thr

MODES = ("none", "fnd", "glofnd", "glofnd_shared", "oracle")
LEARNED_MODES = ("glofnd", "glofnd_shared")


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"detection mode {mode!r} is unknown; choose one of {', '.join(MODES)}.")


def keep_mask(sims: jax.Array, negatives: jax.Array, threshold_rows: jax.Array) -> jax.Array:
  """``(R, B, C)`` bool: negatives with similarity ``<=`` the anchor's threshold ``(B,)``."""
  return negatives & (sims <= threshold_rows[None, :, None])


class Detection(NamedTuple):
  """What a detector returns for one batch.

  Attributes:
    thresholds: new per-sample state (``None`` for stateless modes).
    keep: ``(R, B, C)`` bool mask of negatives the loss uses this step.
    below: ``(R, B, C)`` bool, what the detector would keep, whether or not the mask is active.
    metrics: scalar diagnostics.
    threshold_rows: ``(B,)`` the thresholds ``keep`` compared against (lambda rows for the
      learned modes, the batch quantile for ``fnd``), ``+inf`` while the mask is inactive, so
      ``keep == keep_mask(sims, negatives, threshold_rows)``; ``None`` for ``none`` and
      ``oracle``, which have no threshold. What :func:`glofnd_jax.treatments.treat` reweights by.
  """

  thresholds: thr.ThresholdState | None
  keep: jax.Array
  below: jax.Array
  metrics: dict
  threshold_rows: jax.Array | None = None


def detect(mode: str, sims: jax.Array, negatives: jax.Array, index: jax.Array, epoch,
           config: thr.ThresholdConfig, state: thr.ThresholdState | None = None,
           row_labels: jax.Array | None = None, col_labels: jax.Array | None = None,
           quantile_metric: bool = False) -> Detection:
  """Update thresholds (learned modes) and compute the keep-mask, in the reference's order.

  Args:
    mode: one of :data:`MODES` (static).
    sims: ``(R, B, C)`` similarities of the batch anchors (used without gradient).
    negatives: ``(R, B, C)`` bool negative mask.
    index: ``(B,)`` global dataset indices of the anchors.
    epoch: scalar int epoch of the step.
    config: threshold settings (alpha, start epochs, Adam settings).
    state: per-sample thresholds for the learned modes.
    row_labels, col_labels: ``(B,)`` and ``(C,)`` labels; required by ``oracle``, and when given
      precision/recall of the flags are reported.
    quantile_metric: also report ``batch_quantile_mean``, the mean mini-batch (1 - alpha)
      quantile, to compare with ``lambda_mean`` (static). Mode ``fnd`` reports it always (its
      mask computes it anyway); for the other modes it costs a ``top_k`` of the similarity rows
      each step, a few percent of a small model's step on CPU, hence off by default.

  Returns:
    A :class:`Detection`.
  """
  check_mode(mode)
  sims = jax.lax.stop_gradient(sims)
  epoch = jnp.asarray(epoch, jnp.int32)
  metrics, threshold_rows = {}, None
  if mode == "none":
    below = negatives
  elif mode in LEARNED_MODES:
    if state is None:
      raise ValueError(f"detection mode {mode!r} needs a ThresholdState (init_thresholds).")
    state, lam_rows = thr.update_thresholds(state, sims, negatives, index, epoch, config,
                                            shared=mode == "glofnd_shared")
    below = keep_mask(sims, negatives, lam_rows)
    threshold_rows = lam_rows
    metrics["lambda_mean"] = jnp.mean(lam_rows)
  elif mode == "fnd":
    quantile = thr.batch_quantile(sims, negatives, 1.0 - config.alpha)
    below = keep_mask(sims, negatives, quantile)
    threshold_rows = quantile
    metrics["batch_quantile_mean"] = jnp.nanmean(quantile)
  else:  # oracle
    if row_labels is None or col_labels is None:
      raise ValueError("detection mode 'oracle' needs labels: pass row_labels and col_labels.")
    below = negatives & (col_labels[None, None, :] != row_labels[None, :, None])

  mask_active = epoch >= config.start_mask
  keep = jnp.where(mask_active, below, negatives)
  if threshold_rows is not None:
    threshold_rows = jnp.where(mask_active, threshold_rows, jnp.inf)
  metrics.update(diagnostics(sims, negatives, keep, below, config.alpha, row_labels, col_labels,
                             with_quantile=quantile_metric and mode != "fnd"))
  return Detection(thresholds=state, keep=keep, below=below, metrics=metrics,
                   threshold_rows=threshold_rows)


def diagnostics(sims, negatives, keep, below, alpha, row_labels=None, col_labels=None,
                with_quantile: bool = True) -> dict:
  """Scalar metrics: kept fraction, flagged fraction, batch quantile, FN precision/recall."""
  flagged = negatives & ~below
  counts = {"negatives": jnp.sum(negatives), "kept": jnp.sum(keep), "flagged": jnp.sum(flagged)}
  if row_labels is not None and col_labels is not None:
    same = negatives & (col_labels[None, None, :] == row_labels[None, :, None])
    counts.update(same=jnp.sum(same), hits=jnp.sum(flagged & same))
  out = diagnostics_from_counts(**counts)
  if with_quantile:
    out["batch_quantile_mean"] = jnp.nanmean(thr.batch_quantile(sims, negatives, 1.0 - alpha))
  return out


def diagnostics_from_counts(negatives, kept, flagged, same=None, hits=None) -> dict:
  """:func:`diagnostics` from batch totals (for callers that count block by block).

  Args:
    negatives, kept, flagged: # negative pairs, # kept by the loss, # flagged by the detector.
    same, hits: with labels, # negatives sharing the anchor's label and # of those flagged.

  ``fn_precision`` is NaN when nothing is flagged and ``fn_recall`` when no negative shares the
  anchor's label: undefined, not 0 (a 0 would read as "every flag was wrong").
  """
  n_neg = jnp.maximum(negatives, 1).astype(jnp.float32)
  out = {"kept_fraction": kept / n_neg, "flagged_fraction": flagged / n_neg}
  if same is not None and hits is not None:
    hits = jnp.asarray(hits, jnp.float32)
    out["fn_precision"] = _ratio_or_nan(hits, flagged)
    out["fn_recall"] = _ratio_or_nan(hits, same)
  return out


def _ratio_or_nan(numerator, denominator) -> jax.Array:
  return jnp.where(denominator > 0, numerator / jnp.maximum(denominator, 1), jnp.nan)
