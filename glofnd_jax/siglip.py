"""SigLIP's pairwise sigmoid loss with GloFND detection, dense or as a chunked ring over the mesh.

With x, y the L2-normalised image and text features of a batch of B pairs, ``a = exp(t)`` the
logit scale (t learnable, initialised to log 10) and ``b`` a learnable bias (initialised to
-10), every image-text pair (i, j) is one binary classification:

    z_ij = a <x_i, y_j> + b,   l_ij = +1 if i == j else -1,
    loss = (1/B) sum_ij w_ij softplus(-l_ij z_ij)          (softplus(-u) = -log sigmoid(u))

Normalisation: the paper (and big_vision) sums the B^2 pair terms and divides by B, the number
of positive pairs. A removed pair leaves the sum and the divisor stays B: sigmoid terms are
independent binary losses, so unlike a softmax nothing else has to be renormalised, and the
loss of a batch with removed pairs is the full loss minus their terms. An attracted pair (label
+1, as FFF, CVPR 2024) stays in the sum with its new label.

Directions. GloFND keeps one threshold per image anchor (over its text row) and one per text
anchor (over its image column), as FastCLIP does. SigLIP has a single symmetric term per pair,
so the two directions' treatments each act on **half** of it:

    term_ij = 1/2 [w^I_ij softplus(-l^I_ij z_ij) + w^T_ji softplus(-l^T_ji z_ij)]

with (w^I, l^I) from image anchor i's flags and (w^T, l^T) from text anchor j's. A pair flagged
in both directions is removed (or attracted) fully, one flagged in one direction by half. With
no flags this is exactly the SigLIP loss. (The product of the two keep masks would instead let
either direction remove the whole pair, and has no meaning for attraction.) ``neg_weight`` and
``attract`` carry the two directions on a leading axis of length 2 in pair orientation (row i =
image, column j = text); a ``(B, B)`` value applies to both.

Two implementations with the same numbers (see :func:`ring_step`):

* ``dense``: each device computes its own image rows against the all-gathered text columns,
  ``(B/D, B)`` similarities per device (big_vision's pattern; :func:`siglip_loss`).
* ``ring``: ``jax.shard_map`` over the ``data`` axis; text chunks ``(B/D, d)`` travel around the
  ring with ``lax.ppermute`` together with what detection needs of their columns (thresholds,
  labels, per-column counts), so a device only ever holds one ``(B/D, B/D)`` similarity block.
  Detection counts ``#{s > lambda}`` and the loss terms accumulate over the D steps. The
  gradient is autodiff through the ring (the transpose of a ppermute is the reverse
  permutation); the block computation is rematerialised so the backward pass stores only the
  travelling chunks, never the blocks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

# The mesh axis the ring runs over (glofnd_jax.sharding.DATA; named here so the core imports
# nothing of the stack).
DATA = "data"

from glofnd_jax import detection
from glofnd_jax import similarity as sim
from glofnd_jax import thresholds as thr

LOG_SCALE_INIT = math.log(10.0)  # t: logit scale exp(t) = 10 at the start
BIAS_INIT = -10.0
IMPLS = ("dense", "ring")
TREATMENTS = ("remove", "attract")
RING_MODES = ("none", "glofnd", "glofnd_shared", "oracle")

sg = jax.lax.stop_gradient


@struct.dataclass
class SigLIPState:
  """SigLIP keeps no per-sample state (its parameters t and b live with the model's)."""


def check_impl(impl: str, mode: str) -> None:
  """Raise a clear error for an unknown ``impl`` or a detection mode the ring cannot run."""
  if impl not in IMPLS:
    raise ValueError(f"siglip impl {impl!r} is unknown; choose one of {', '.join(IMPLS)}.")
  if impl == "ring" and mode not in RING_MODES:
    raise ValueError(f"detection mode {mode!r} needs whole similarity rows (a batch quantile); "
                     f"the siglip ring runs {', '.join(RING_MODES)}: use impl='dense'.")


def check_treatment(treatment: str) -> None:
  if treatment not in TREATMENTS:
    raise ValueError(f"treatment {treatment!r} is unknown; choose one of {', '.join(TREATMENTS)}.")


def treat(flagged: jax.Array, treatment: str) -> tuple[jax.Array, jax.Array | None]:
  """``(neg_weight, attract)`` for :func:`siglip_loss` from the active flags.

  Args:
    flagged: ``(2, r, c)`` bool in pair orientation: [0] flagged by the image anchor (row),
      [1] by the text anchor (column). Positives are never flagged.
    treatment: ``"remove"`` (flagged pairs leave the loss) or ``"attract"`` (they become
      positives, weight 1).
  """
  check_treatment(treatment)
  if treatment == "remove":
    return (~flagged).astype(jnp.float32), None
  return jnp.ones((), jnp.float32), flagged


def pair_loss_sum(sims: jax.Array, is_positive: jax.Array, logit_scale, bias,
                  neg_weight=1.0, attract: jax.Array | None = None) -> jax.Array:
  """``sum_ij term_ij`` over a block of pairs (the module docstring's per-pair term).

  Args:
    sims: ``(r, c)`` cosine similarities (image rows, text columns).
    is_positive: ``(r, c)`` bool, True at the paired positions.
    logit_scale, bias: scalars a and b.
    neg_weight: float32 in [0, 1], ``(2, r, c)`` per direction or broadcastable to ``(r, c)``;
      multiplies each negative pair's term whatever its label (positives keep weight 1).
    attract: optional bool of the same layout: negatives that take label +1.

  Returns:
    Scalar float32 sum (not yet divided by B).
  """
  logits = logit_scale * sims.astype(jnp.float32) + bias
  neg_weight = jnp.asarray(neg_weight, jnp.float32)
  positive = is_positive if attract is None else is_positive | attract
  labels = jnp.where(positive, 1.0, -1.0)
  terms = jnp.where(is_positive, 1.0, neg_weight) * jax.nn.softplus(-labels * logits)
  if terms.ndim == 3:  # one half per direction
    terms = jnp.mean(terms, axis=0)
  return jnp.sum(terms)


def siglip_loss(img: jax.Array, txt: jax.Array, *, logit_scale, bias, neg_weight=1.0,
                attract: jax.Array | None = None) -> jax.Array:
  """The SigLIP loss of a batch (dense), normalised as the paper: sum over pairs / B.

  Args:
    img, txt: ``(B, d)`` raw features (normalised here; gradients flow through).
    logit_scale: ``exp(t)`` (scalar; differentiable).
    bias: b (scalar; differentiable).
    neg_weight: float32 ``(2, B, B)`` or broadcastable, in [0, 1] (1: no detection; a removal
      is the keep mask cast to float32); see :func:`pair_loss_sum` and the module docstring.
    attract: optional bool ``(2, B, B)`` or ``(B, B)``: flagged negatives that become positives.

  Returns:
    Scalar float32 loss.
  """
  x, y = sim.l2_normalize(img), sim.l2_normalize(txt)
  batch = x.shape[0]
  sims = sim.cosine(x, y)
  total = pair_loss_sum(sims, jnp.eye(batch, dtype=bool), jnp.asarray(logit_scale, jnp.float32),
                        jnp.asarray(bias, jnp.float32), neg_weight, attract)
  return total / batch


def dense_flags(keep_img: jax.Array, keep_txt: jax.Array) -> jax.Array:
  """``(2, B, B)`` active flags in pair orientation from detection's keep masks.

  ``keep_img`` is ``(B, B)`` with image rows, ``keep_txt`` ``(B, B)`` with text rows (as
  :func:`glofnd_jax.detection.detect` returns them for the two directions).
  """
  negatives = ~jnp.eye(keep_img.shape[0], dtype=bool)
  return jnp.stack([negatives & ~keep_img, (negatives & ~keep_txt).T])


# ----------------------------------------------------------------------------- ring

def _ring(body, local, travelling, axis_size: int):
  """Run ``body(k, local, travelling) -> (local, travelling, out)`` for k = 0..D-1.

  After each step the ``travelling`` pytree moves one device down the ring, so at step k device
  p holds the chunk of device (p + k) mod D, and after D steps every chunk (and whatever
  accumulated in it) is home again. ``body`` is rematerialised in the backward pass.
  """
  perm = [(i, (i - 1) % axis_size) for i in range(axis_size)]
  body = jax.checkpoint(body, prevent_cse=False)

  def step(carry, k):
    local, travelling, out = body(k, *carry)
    travelling = jax.tree.map(lambda a: jax.lax.ppermute(a, DATA, perm), travelling)
    return (local, travelling), out

  (local, travelling), outs = jax.lax.scan(step, (local, travelling), jnp.arange(axis_size))
  return local, travelling, outs


def _block_positions(k, rows: int, axis_size: int):
  """``(rows, rows)`` bool positive mask of step k's block and the column chunk's id."""
  device = jax.lax.axis_index(DATA)
  chunk = (device + k) % axis_size
  return (device == chunk) & jnp.eye(rows, dtype=bool), chunk


def _below(mode, sims, negatives, row, col):
  """``(2, r, c)`` negatives at or under each direction's threshold (pair orientation)."""
  if mode == "none":
    return jnp.stack([negatives, negatives])
  if mode == "oracle":
    differ = negatives & (row["label"][:, None] != col["label"][None, :])
    return jnp.stack([differ, differ])
  return jnp.stack([negatives & (sims <= row["lam"][:, None]),
                    negatives & (sims <= col["lam"][None, :])])


def _ring_counts(mesh: Mesh, x, y, lam_img, lam_txt):
  """Per anchor: # negatives above its current threshold, image rows and text columns."""
  axis_size = mesh.shape[DATA]

  def per_device(x, y, lam_img, lam_txt):
    rows = x.shape[0]

    def body(k, above_img, travel):
      is_positive, _ = _block_positions(k, rows, axis_size)
      sims = sim.cosine(x, travel["y"])
      negatives = ~is_positive
      above_img = above_img + jnp.sum(negatives & (sims > lam_img[:, None]), axis=1)
      above_txt = travel["above"] + jnp.sum(negatives & (sims > travel["lam"][None, :]), axis=0)
      return above_img, dict(travel, above=above_txt), None

    zeros = jnp.zeros((rows,), jnp.int32)
    above_img, travel, _ = _ring(body, zeros, {"y": y, "lam": lam_txt, "above": zeros}, axis_size)
    return above_img, travel["above"]

  return jax.shard_map(per_device, mesh=mesh, in_specs=P(DATA), out_specs=P(DATA),
                       check_vma=False)(x, y, lam_img, lam_txt)


def _ring_loss(mesh: Mesh, mode, treatment, x, y, logit_scale, bias, lam_img, lam_txt, labels,
               mask_active, return_masks: bool):
  """Loss sum, per-anchor counts and (optionally) the keep-mask blocks, one ring pass."""
  axis_size = mesh.shape[DATA]
  # Every input is split over `data` (the scalars as one copy per device), so with
  # check_vma=False the transposes stay plain sums: the copies' gradients add up outside.
  copies = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (axis_size,))
  active = jnp.broadcast_to(jnp.asarray(mask_active, bool), (axis_size,))

  def per_device(x, y, logit_scale, bias, lam_img, lam_txt, labels, active):
    rows = x.shape[0]
    row = {"lam": lam_img, "label": labels}

    def body(k, local, travel):
      is_positive, _ = _block_positions(k, rows, axis_size)
      negatives = ~is_positive
      sims = sim.cosine(x, travel["y"])
      below = _below(mode, sims, negatives, row, travel)
      keep = jnp.where(active[0], below, negatives[None])
      flagged = negatives & ~keep
      neg_weight, attract = treat(flagged, treatment)
      loss = local["loss"] + pair_loss_sum(sims, is_positive, logit_scale[0], bias[0], neg_weight,
                                           attract)
      same = negatives & (row["label"][:, None] == travel["label"][None, :])
      hits = (negatives & ~below) & same
      local = {"loss": loss, "kept": local["kept"] + jnp.sum(keep[0], 1),
               "below": local["below"] + jnp.sum(below[0], 1),
               "hits": local["hits"] + jnp.sum(hits[0], 1), "same": local["same"] + jnp.sum(same, 1)}
      travel = dict(travel, kept=travel["kept"] + jnp.sum(keep[1], 0),
                    below=travel["below"] + jnp.sum(below[1], 0),
                    hits=travel["hits"] + jnp.sum(hits[1], 0))
      return local, travel, (keep if return_masks else None)

    zeros = jnp.zeros((rows,), jnp.int32)
    local = {"loss": jnp.zeros((), jnp.float32), "kept": zeros, "below": zeros, "hits": zeros,
             "same": zeros}
    travel = {"y": y, "lam": lam_txt, "label": labels, "kept": zeros, "below": zeros,
              "hits": zeros}
    local, travel, keep_blocks = _ring(body, local, travel, axis_size)
    img_counts = {n: local[n] for n in ("kept", "below", "hits", "same")}
    txt_counts = {n: travel[n] for n in ("kept", "below", "hits")}
    return local["loss"][None], img_counts, txt_counts, keep_blocks

  loss_parts, img_counts, txt_counts, keep_blocks = jax.shard_map(
      per_device, mesh=mesh, in_specs=P(DATA), out_specs=P(DATA), check_vma=False)(
          x, y, copies(logit_scale), copies(bias), lam_img, lam_txt, labels, active)
  masks = None if keep_blocks is None else _assemble(keep_blocks, axis_size)
  return jnp.sum(loss_parts), img_counts, txt_counts, masks


def _assemble(keep_blocks, axis_size: int):
  """``(2, B, B)`` pair-orientation masks from the devices' ``(D*D, 2, r, r)`` step blocks."""
  _, _, rows, _ = keep_blocks.shape
  by_step = keep_blocks.reshape(axis_size, axis_size, 2, rows, rows)  # [device p, step k]
  devices = jnp.arange(axis_size)
  step_of = (devices[None, :] - devices[:, None]) % axis_size  # column chunk q at step q - p
  blocks = jnp.take_along_axis(by_step, step_of[:, :, None, None, None], axis=1)
  return blocks.transpose(2, 0, 3, 1, 4).reshape(2, axis_size * rows, axis_size * rows)


def ring_step(img: jax.Array, txt: jax.Array, index_img: jax.Array, index_txt: jax.Array,
              thresholds_img: thr.ThresholdState | None, thresholds_txt: thr.ThresholdState | None,
              epoch, config: thr.ThresholdConfig, *, mode: str, treatment: str, logit_scale, bias,
              mesh: Mesh, labels: jax.Array | None = None, return_masks: bool = False):
  """GloFND detection and the SigLIP loss of one batch, as a ring over ``mesh``'s data axis.

  The same numbers as detection by :func:`glofnd_jax.detection.detect` on the full ``(1, B, B)``
  rows of both directions followed by :func:`siglip_loss` (``impl="dense"`` in
  :func:`glofnd_jax.objectives.bimodal_objective`): pass 1 counts each anchor's negatives above
  its threshold, the thresholds take their step on the batch rows (outside the ring, O(B)),
  pass 2 masks with the new thresholds and accumulates the loss.

  Args:
    img, txt: ``(B, d)`` raw features, B a multiple of the data axis size.
    index_img, index_txt: ``(B,)`` global indices.
    thresholds_img, thresholds_txt: per-sample thresholds (learned modes) or None.
    epoch: scalar int epoch.
    config: threshold settings (``init_quantile`` is not available: it needs whole rows).
    mode: detection mode, one of :data:`RING_MODES`.
    treatment: one of :data:`TREATMENTS`.
    logit_scale, bias: ``exp(t)`` and b (differentiable).
    mesh: the mesh; the ring runs over its ``data`` axis.
    labels: optional ``(B,)`` int classes (``oracle``; FN precision/recall metrics).
    return_masks: also return the ``(B, B)`` keep masks (tests only: they are B x B).

  Returns:
    ``loss, (new_thresholds_img, new_thresholds_txt, metrics_img, metrics_txt, per_anchor)``;
    ``per_anchor`` holds ``kept_img/kept_txt``, ``below_img/below_txt`` ``(B,)`` (and
    ``mask_img`` with image rows, ``mask_txt`` with text rows, when asked).
  """
  check_impl("ring", mode)
  check_treatment(treatment)
  if config.init_quantile:
    raise ValueError("thresholds.init_quantile needs whole similarity rows; with the siglip ring "
                     "set init_quantile=False (or use impl='dense').")
  if mode == "oracle" and labels is None:
    raise ValueError("detection mode 'oracle' needs labels: pass labels.")
  batch = img.shape[0]
  x, y = sim.l2_normalize(img), sim.l2_normalize(txt)
  epoch = jnp.asarray(epoch, jnp.int32)
  metrics_img, metrics_txt = {}, {}
  lam_img = lam_txt = jnp.ones((batch,), jnp.float32)
  if mode in detection.LEARNED_MODES:
    if thresholds_img is None or thresholds_txt is None:
      raise ValueError(f"detection mode {mode!r} needs ThresholdStates for images and texts.")
    shared = mode == "glofnd_shared"
    old_img = thr.anchor_thresholds(thresholds_img, index_img, shared)
    old_txt = thr.anchor_thresholds(thresholds_txt, index_txt, shared)
    above_img, above_txt = _ring_counts(mesh, sg(x), sg(y), old_img, old_txt)
    total = jnp.full((batch,), batch - 1, jnp.int32)
    thresholds_img, lam_img = thr.update_thresholds_from_counts(
        thresholds_img, above_img, total, index_img, epoch, config, shared)
    thresholds_txt, lam_txt = thr.update_thresholds_from_counts(
        thresholds_txt, above_txt, total, index_txt, epoch, config, shared)
    metrics_img["lambda_mean"], metrics_txt["lambda_mean"] = jnp.mean(lam_img), jnp.mean(lam_txt)
  with_labels = labels is not None
  ring_labels = labels.astype(jnp.int32) if with_labels else jnp.zeros((batch,), jnp.int32)
  loss_sum, img_counts, txt_counts, masks = _ring_loss(
      mesh, mode, treatment, x, y, logit_scale, bias, lam_img, lam_txt, ring_labels,
      epoch >= config.start_mask, return_masks)

  negatives = batch * (batch - 1)
  for metrics, counts in ((metrics_img, img_counts), (metrics_txt, txt_counts)):
    flagged = negatives - jnp.sum(counts["below"])
    extra = {"same": jnp.sum(img_counts["same"]), "hits": jnp.sum(counts["hits"])} if with_labels \
        else {}
    metrics.update(detection.diagnostics_from_counts(negatives, jnp.sum(counts["kept"]), flagged,
                                                     **extra))
  per_anchor = {"kept_img": img_counts["kept"], "kept_txt": txt_counts["kept"],
                "below_img": img_counts["below"], "below_txt": txt_counts["below"]}
  if masks is not None:
    per_anchor.update(mask_img=masks[0], mask_txt=masks[1].T)
  return loss_sum / batch, (thresholds_img, thresholds_txt, metrics_img, metrics_txt, per_anchor)
