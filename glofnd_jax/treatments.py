"""Treatments of detected false negatives: what a loss does with the negatives a detector flags.

A detector (:mod:`glofnd_jax.detection`) says which negatives it keeps; a treatment turns that
into the two arrays every loss of :mod:`glofnd_jax.losses` takes:

* ``neg_weight``: float32 ``(R, B, C)`` in [0, 1], multiplying each negative's term. Losses
  renormalise by its row sum ``W_i = sum_j w_ij`` where they used the kept count.
* ``attract``: bool ``(R, B, C)`` of flagged negatives that become extra positives, or ``None``.

Treatments:
  ``remove``    ``w = keep`` (as float), no attraction: today's behaviour, the default.
  ``attract``   ``w = keep`` and ``attract = negatives & ~keep``: flagged negatives join the
                anchor's positives (FNC's attraction, Huynh et al., WACV 2022). How each loss
                averages over the enlarged positive set is in its docstring.
  ``reweight``  ``w_ij = sigmoid((lambda_i - s_ij) / tau_w)`` on negatives (0 elsewhere), with
                ``lambda_i`` the threshold the detector compared against: GloFND's learned
                lambda_i, FND's mini-batch quantile. As ``tau_w -> 0`` it tends to ``remove``
                (up to a negative exactly at its threshold, which gets 1/2). Detectors without a
                threshold (``none``, ``oracle``) get hard weights ``w = keep``.

Everything here is detached (the weights and the flags carry no gradient) and works row by row,
so a sharded step keeps its ``(R, B / D, C)`` layout. Before ``start_mask`` every treatment gives
the plain loss: ``keep`` is then all negatives and the threshold rows are ``+inf``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

TREATMENTS = ("remove", "attract", "reweight")


def check_treatment(treatment: str, tau_w: float | None = None, prefix: str = "") -> None:
  """Raise one clear ``ValueError`` for an unknown treatment or a non-positive ``tau_w``.

  ``prefix`` goes before the field names in the message (e.g. ``"config.glofnd."``).
  """
  if treatment not in TREATMENTS:
    raise ValueError(f"{prefix}treatment={treatment!r} is unknown; choose one of "
                     f"{', '.join(TREATMENTS)}.")
  if tau_w is not None and not (isinstance(tau_w, (int, float)) and tau_w > 0):
    raise ValueError(f"{prefix}tau_w={tau_w!r} is invalid: reweight's sigmoid temperature must "
                     "be a positive number, e.g. 0.05.")


class Treated(NamedTuple):
  """What the losses take from a treatment.

  Attributes:
    neg_weight: ``(R, B, C)`` float32 in [0, 1]; 0 off the negatives.
    attract: ``(R, B, C)`` bool flagged negatives that become positives, or ``None``.
  """

  neg_weight: jax.Array
  attract: jax.Array | None


def treat(treatment: str, sims: jax.Array, negatives: jax.Array, keep: jax.Array,
          threshold_rows: jax.Array | None, tau_w: float = 0.05) -> Treated:
  """The negative weights and the attracted set of one detection.

  Args:
    treatment: one of :data:`TREATMENTS` (static).
    sims: ``(R, B, C)`` similarity rows (used without gradient).
    negatives: ``(R, B, C)`` bool negative mask.
    keep: ``(R, B, C)`` bool negatives the detector keeps (``Detection.keep``).
    threshold_rows: ``(B,)`` thresholds the keep-mask compared against, ``+inf`` where the mask
      is inactive (``Detection.threshold_rows``); ``None`` for detectors without a threshold.
    tau_w: ``reweight``'s sigmoid temperature (static or traced; positive).

  Returns:
    A :class:`Treated`.
  """
  check_treatment(treatment)
  keep = keep & negatives
  if treatment == "remove":
    return Treated(keep.astype(jnp.float32), None)
  if treatment == "attract":
    return Treated(keep.astype(jnp.float32), negatives & ~keep)
  if threshold_rows is None:
    return Treated(keep.astype(jnp.float32), None)
  sims = jax.lax.stop_gradient(sims)
  margin = (threshold_rows[None, :, None] - sims) / tau_w
  weight = jnp.where(negatives, jax.nn.sigmoid(margin), 0.0).astype(jnp.float32)
  return Treated(jax.lax.stop_gradient(weight), None)


def metrics(treatment: str, treated: Treated, negatives: jax.Array) -> dict:
  """Scalar diagnostics beside the detector's kept fraction: ``reweight`` reports
  ``weight_mean`` (the mean weight of a negative, a soft kept fraction), ``attract`` reports
  ``attracted_fraction`` (the fraction of negatives turned into positives)."""
  n_neg = jnp.maximum(jnp.sum(negatives), 1).astype(jnp.float32)
  if treatment == "reweight":
    return {"weight_mean": jnp.sum(treated.neg_weight) / n_neg}
  if treatment == "attract":
    return {"attracted_fraction": jnp.sum(treated.attract) / n_neg}
  return {}
