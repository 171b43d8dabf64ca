"""Global contrastive losses with treated false negatives: SimCLR, SogCLR and FastCLIP.

Every loss takes raw features, the batch's global indices, its per-sample state and the treated
detection from :mod:`glofnd_jax.treatments`: ``neg_weight`` (float ``(R, B, C)`` in [0, 1], or
the bool keep-mask of :mod:`glofnd_jax.detection`, which gives exactly the removal loss) and an
optional ``attract`` (bool ``(R, B, C)``: negatives that become extra positives). Each returns
``loss, (new_state, metrics)`` so it drops straight into ``jax.value_and_grad(..., has_aux=True)``.
The per-sample state is read and written only at the batch indices. Moving averages ``u``, the
weights built from them, and ``neg_weight`` carry no gradient.

Negatives are renormalised by the row sum of their weights ``W_i = sum_j w_ij`` (the kept count
for a 0/1 mask). Rows with ``W_i = 0`` (every negative flagged) are defined, not NaN: their
negative term is 0, and their ``u`` is left unchanged (no new information). The reference divides
by zero there. ``attract`` entries should have weight 0 (a treatment makes them disjoint).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from glofnd_jax import per_sample
from glofnd_jax import similarity as sim
from glofnd_jax.siglip import siglip_loss  # noqa: F401  (SigLIP lives in its own module)

sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------- unimodal

@struct.dataclass
class SogCLRState:
  """``u``: ``(N,)`` float32 moving average of each sample's negative term (starts at 0)."""

  u: jax.Array


@struct.dataclass
class SimCLRState:
  """SimCLR keeps no per-sample state."""


def init_sogclr(num_samples: int) -> SogCLRState:
  return SogCLRState(u=jnp.zeros((num_samples,), jnp.float32))


def _weights(neg_weight):
  """Detached float32 weights, their row sums ``W`` and ``W`` with empty rows set to 1.

  A bool keep-mask becomes 0/1 weights whose sums are exact integers, so every loss computes the
  same bits as with the mask itself.
  """
  weight = sg(jnp.asarray(neg_weight).astype(jnp.float32))
  total = jnp.sum(weight, axis=-1)
  return weight, total, jnp.where(total > 0, total, 1.0)


def _positive_mean(positives, sims, attract):
  """Mean similarity over each anchor's positive set: the positive and its attracted negatives.

  ``positives`` ``(R, B)``, ``sims`` ``(R, B, C)``; without ``attract`` just ``positives``.
  """
  if attract is None:
    return positives
  total = positives + jnp.sum(jnp.where(attract, sims, 0.0), axis=-1)
  return total / (1.0 + jnp.sum(attract, axis=-1).astype(jnp.float32))


def sogclr_loss(h1: jax.Array, h2: jax.Array, index: jax.Array, state: SogCLRState,
                neg_weight: jax.Array, *, temperature: float, gamma,
                attract: jax.Array | None = None) -> tuple[jax.Array, tuple]:
  """SogCLR dynamic contrastive loss (the authors' ``dcl`` surrogate) with weighted negatives.

  For view a (b alike), with S the ``(2, B, 2B)`` cosine rows, w the negative weights (the
  keep-mask for removal), W_i = sum_j w_ij, and P_i = {i} + A_i the positive and the attracted
  negatives A_i (P_i = {i} without ``attract``):
    E_ij = w_ij exp(S_ij / T),  u_a(i) = (1 - g) u(i) + g sum_j E_ij / W_i,
    l_a(i) = -(1/|P_i|) sum_{p in P_i} S_ip + sum_j [E_ij / u_a(i)]_detached S_ij / W_i,
  loss = (1/B) sum_i [l_a(i) + l_b(i)]. ``g = 1`` when every stored ``u`` of the batch is 0.
  The stored ``u`` is the mean of the two views' new estimates.

  Attraction: SogCLR's objective per anchor and positive p is -S_ip + T log(mean_j E_ij), whose
  log term (estimated by ``u`` over the remaining negatives) does not depend on p; FNC's average
  over P_i therefore only averages the positive similarity, as above. As in SogCLR the positives
  stay out of the denominator.

  Args:
    h1, h2: ``(B, d)`` raw features of the two views (normalised here; gradients flow through).
    index: ``(B,)`` global dataset indices.
    state: :class:`SogCLRState`.
    neg_weight: ``(2, B, 2B)`` float weights in [0, 1], or the bool keep-mask.
    temperature: T.
    gamma: moving-average rate (scalar; may be traced).
    attract: optional ``(2, B, 2B)`` bool negatives that join the positives.

  Returns:
    ``loss, (new_state, metrics)``.
  """
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  u_old = per_sample.gather(state.u, index)
  gamma = jnp.where(jnp.all(u_old == 0), 1.0, jnp.asarray(gamma, jnp.float32))
  weight, total, safe_total = _weights(neg_weight)
  exp_weighted = jnp.where(weight > 0, weight * jnp.exp(sg(sims) / temperature), 0.0)
  estimate = jnp.sum(exp_weighted, axis=-1) / safe_total  # (2, B)
  u_views = jnp.where(total > 0, (1.0 - gamma) * u_old[None] + gamma * estimate, u_old[None])
  weights = sg(jnp.where(weight > 0,
                         exp_weighted / jnp.where(total > 0, u_views, 1.0)[..., None], 0.0))
  negative_term = jnp.sum(weights * sims, axis=-1) / safe_total
  positive_term = _positive_mean(sim.unimodal_positives(sims), sims, attract)
  per_anchor = jnp.sum(negative_term - positive_term, axis=0)
  loss = jnp.mean(per_anchor)
  new_state = SogCLRState(u=per_sample.scatter(state.u, index, jnp.mean(u_views, axis=0)))
  return loss, (new_state, {"u_mean": jnp.mean(u_views), "gamma": gamma})


def simclr_loss(h1: jax.Array, h2: jax.Array, index: jax.Array, state: SimCLRState,
                neg_weight: jax.Array, *, temperature: float, gamma=None,
                attract: jax.Array | None = None) -> tuple[jax.Array, tuple]:
  """SimCLR NT-Xent where weighted negatives are renormalised to the full negative count.

  With w the negative weights (the keep-mask for removal), W_i = sum_j w_ij, n = 2B - 2 negatives
  per row, A_i the attracted negatives and P_i = {i} + A_i (P_i = {i} without ``attract``):
    D_a(i) = exp(S_ii/T) + sum_{j in A_i} exp(S_ij/T) + ((n - |A_i|)/W_i) sum_j w_ij exp(S_ij/T),
    l_a(i) = -(1/|P_i|) sum_{p in P_i} S_ip/T + log D_a(i),
  loss = (1/B) sum_i [l_a(i) + l_b(i)] (sum over the two views). Without attraction this is
  ``-S_ii/T + log(exp(S_ii/T) + (n/W_i) sum_j w_ij exp(S_ij/T))``. With attraction (w = keep, so
  W_i = n - |A_i|) it is FNC's SupCon-style loss: the mean over P_i of -log(exp(S_ip/T) / D),
  with D summing every candidate but the anchor itself. Computed with a weighted logsumexp, so
  it is stable at small temperatures. ``index``, ``state`` and ``gamma`` exist for a uniform
  signature; SimCLR keeps no per-sample state.
  """
  del index, gamma
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  batch = sims.shape[1]
  positives = sim.unimodal_positives(sims) / temperature  # (2, B)
  weight, _, safe_total = _weights(neg_weight)
  n_rest = jnp.sum(sim.unimodal_negatives(batch), axis=-1).astype(jnp.float32)
  if attract is not None:
    n_rest = n_rest - jnp.sum(attract, axis=-1).astype(jnp.float32)
  # Dropped negatives get -inf logits; the others are reweighted by w (n - |A|) / W via a log
  # offset (log w is exactly 0 for a kept negative of a 0/1 mask).
  negatives = jnp.where(weight > 0, sims / temperature + jnp.log(n_rest / safe_total)[..., None]
                        + jnp.log(weight), -jnp.inf)
  parts = [positives[..., None], negatives]
  if attract is not None:
    parts.append(jnp.where(attract, sims / temperature, -jnp.inf))
  logits = jnp.concatenate(parts, axis=-1)
  positive_term = _positive_mean(positives, sims / temperature, attract)
  loss = jnp.mean(jnp.sum(jax.nn.logsumexp(logits, axis=-1) - positive_term, axis=0))
  return loss, (state, {})


UNIMODAL_LOSSES = {"sogclr": sogclr_loss, "simclr": simclr_loss}


# ----------------------------------------------------------------------------- bimodal

@struct.dataclass
class FastCLIPState:
  """Moving averages for image anchors (``u_img``, by image index) and text anchors (``u_txt``)."""

  u_img: jax.Array
  u_txt: jax.Array


def init_fastclip(num_samples: int) -> FastCLIPState:
  # Two buffers, not one shared array: the train state is donated to jit.
  return FastCLIPState(u_img=jnp.zeros((num_samples,), jnp.float32),
                       u_txt=jnp.zeros((num_samples,), jnp.float32))


def cosine_gamma(epoch, gamma_min: float, decay_epochs: int, schedule: str = "cosine"):
  """FastCLIP's ``u`` rate: 1 at epoch 0, cosine down to ``gamma_min`` at ``decay_epochs``."""
  if schedule not in ("cosine", "constant"):
    raise ValueError(f"gamma schedule {schedule!r} is unknown; use 'cosine' or 'constant'.")
  epoch = jnp.asarray(epoch, jnp.float32)
  if schedule == "constant" or decay_epochs <= 0:
    decayed = jnp.float32(gamma_min)
  else:
    cos = 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / decay_epochs))
    decayed = jnp.where(epoch >= decay_epochs, gamma_min, gamma_min + (1.0 - gamma_min) * cos)
  return jnp.where(epoch == 0, 1.0, decayed).astype(jnp.float32)


def _fastclip_direction(sims, positives, neg_weight, attract, logit_scale, u_old, gamma,
                        u_floor=1e-35):
  """Batch estimate g (with gradient) and the new u (detached) for one anchor direction."""
  weight, total, safe_total = _weights(neg_weight[0])
  positives = _positive_mean(positives[None], sims, attract)[0]
  exps = jnp.where(weight > 0,
                   weight * jnp.exp(logit_scale * (sims[0] - positives[:, None])), 0.0)
  estimate = jnp.sum(exps, axis=-1) / safe_total
  u_new = (1.0 - gamma) * u_old + gamma * sg(estimate)
  reset = (gamma < 1.0) & ((u_old < u_floor) | ~jnp.isfinite(u_old))
  u_new = jnp.where(reset, sg(estimate), u_new)
  u_new = jnp.where(total > 0, u_new, u_old)
  return estimate, u_new


def fastclip_loss(img: jax.Array, txt: jax.Array, index_img: jax.Array, index_txt: jax.Array,
                  state: FastCLIPState, neg_weight_img: jax.Array, neg_weight_txt: jax.Array, *,
                  logit_scale, gamma, version: str = "v3", rho: float = 6.5,
                  eps: float = 1e-14, attract_img: jax.Array | None = None,
                  attract_txt: jax.Array | None = None) -> tuple[jax.Array, tuple]:
  """FastCLIP (v1: constant temperature, the bimodal SogCLR; v3: learnable global temperature).

  With x, t the normalised features, ls = logit_scale = 1/tau, w^I the image anchors' negative
  weights (the keep-mask for removal), W^I_i = sum_j w^I_ij, and d_i the mean similarity over the
  positive set P_i = {i} + A^I_i (the pair and the attracted negatives; d_i = <x_i, t_i> without
  attraction):
    g^I_i = (1/W^I_i) sum_j w^I_ij exp(ls (x_i.t_j - d_i)),  g^T_i alike with S^T = t x^T;
    u = (1 - gamma) u_old + gamma g (detached; reset to g when gamma < 1 and u_old < 1e-35 or
    non-finite);  F = mean_i [g^I_i / (u^I_i + eps) + g^T_i / (u^T_i + eps)].
  v1: loss = F.  v3 (``multiply_tau``): loss = F / sg(ls) + rho / ls
    + mean_i [log(u^I_i + eps) + log(u^T_i + eps)] / (2 ls).
  The gradient is the full gradient of this expression (the reference's single-process value).

  Attraction: the per-anchor objective for a positive p is tau log((1/W) sum_j w_ij
  exp((s_ij - s_ip) / tau)) = tau log(mean_j w exp(s_ij / tau)) - s_ip, so FNC's average over
  P_i replaces s_ii by the mean d_i over P_i; ``u`` keeps estimating g over the remaining
  negatives.

  Args:
    img, txt: ``(B, d)`` raw features (normalised here).
    index_img, index_txt: ``(B,)`` global indices of each pair's image and text.
    state: :class:`FastCLIPState`.
    neg_weight_img, neg_weight_txt: ``(1, B, B)`` float negative weights (or bool keep-masks)
      for image anchors and text anchors.
    logit_scale: ls (scalar; differentiable for v3).
    gamma: ``u`` rate (see :func:`cosine_gamma`).
    version: ``"v1"`` or ``"v3"``.
    rho, eps: v3's rho and the eps added to ``u``.
    attract_img, attract_txt: optional ``(1, B, B)`` bool negatives that join the positives.

  Returns:
    ``loss, (new_state, metrics)``; metrics include ``g_img``, ``g_txt`` ``(B,)`` estimates.
  """
  if version not in ("v1", "v3"):
    raise ValueError(f"FastCLIP version {version!r} is unknown; use 'v1' or 'v3'.")
  x, t = sim.l2_normalize(img), sim.l2_normalize(txt)
  s_img, s_txt = sim.bimodal_similarities(x, t)
  positives = jnp.sum(x * t, axis=-1)
  gamma = jnp.asarray(gamma, jnp.float32)
  logit_scale = jnp.asarray(logit_scale, jnp.float32)
  u_old_img = per_sample.gather(state.u_img, index_img)
  u_old_txt = per_sample.gather(state.u_txt, index_txt)
  g_img, u_img = _fastclip_direction(s_img, positives, neg_weight_img, attract_img, logit_scale,
                                     u_old_img, gamma)
  g_txt, u_txt = _fastclip_direction(s_txt, positives, neg_weight_txt, attract_txt, logit_scale,
                                     u_old_txt, gamma)
  objective = jnp.mean(g_img / (u_img + eps) + g_txt / (u_txt + eps))
  if version == "v1":
    loss = objective
  else:
    log_u = jnp.mean(jnp.log(u_img + eps) + jnp.log(u_txt + eps))
    loss = objective / sg(logit_scale) + rho / logit_scale + log_u / (2.0 * logit_scale)
  new_state = FastCLIPState(u_img=per_sample.scatter(state.u_img, index_img, u_img),
                            u_txt=per_sample.scatter(state.u_txt, index_txt, u_txt))
  metrics = {"g_img": sg(g_img), "g_txt": sg(g_txt), "u_img_mean": jnp.mean(u_img),
             "u_txt_mean": jnp.mean(u_txt), "gamma": gamma}
  return loss, (new_state, metrics)
