"""Global contrastive losses with a false-negative keep-mask: SimCLR, SogCLR and FastCLIP.

Every loss takes raw features, the batch's global indices, its per-sample state and the keep-mask
from :mod:`glofnd_jax.detection`, and returns ``loss, (new_state, metrics)`` so it drops straight
into ``jax.value_and_grad(..., has_aux=True)``. The per-sample state is read and written only at
the batch indices. Moving averages ``u`` and the weights built from them carry no gradient.

Rows with no kept negative (every negative flagged) are defined, not NaN: their negative term is
0, and their ``u`` is left unchanged (no new information). The reference divides by zero there.
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


def _safe_count(keep):
  count = jnp.sum(keep, axis=-1)
  return count, jnp.maximum(count, 1).astype(jnp.float32)


def sogclr_loss(h1: jax.Array, h2: jax.Array, index: jax.Array, state: SogCLRState,
                keep: jax.Array, *, temperature: float, gamma) -> tuple[jax.Array, tuple]:
  """SogCLR dynamic contrastive loss (the authors' ``dcl`` surrogate) with kept negatives.

  For view a (b alike), with S the ``(2, B, 2B)`` cosine rows and k_i the kept count:
    E_ij = exp(S_ij / T) keep_ij,  u_a(i) = (1 - g) u(i) + g sum_j E_ij / k_i,
    l_a(i) = -S_ii + sum_j [E_ij / u_a(i)]_detached S_ij / k_i,
  loss = (1/B) sum_i [l_a(i) + l_b(i)]. ``g = 1`` when every stored ``u`` of the batch is 0.
  The stored ``u`` is the mean of the two views' new estimates.

  Args:
    h1, h2: ``(B, d)`` raw features of the two views (normalised here; gradients flow through).
    index: ``(B,)`` global dataset indices.
    state: :class:`SogCLRState`.
    keep: ``(2, B, 2B)`` bool keep-mask.
    temperature: T.
    gamma: moving-average rate (scalar; may be traced).

  Returns:
    ``loss, (new_state, metrics)``.
  """
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  u_old = per_sample.gather(state.u, index)
  gamma = jnp.where(jnp.all(u_old == 0), 1.0, jnp.asarray(gamma, jnp.float32))
  count, safe_count = _safe_count(keep)
  exp_kept = jnp.where(keep, jnp.exp(sg(sims) / temperature), 0.0)
  estimate = jnp.sum(exp_kept, axis=-1) / safe_count  # (2, B)
  u_views = jnp.where(count > 0, (1.0 - gamma) * u_old[None] + gamma * estimate, u_old[None])
  weights = sg(jnp.where(keep, exp_kept / jnp.where(count > 0, u_views, 1.0)[..., None], 0.0))
  negative_term = jnp.sum(weights * sims, axis=-1) / safe_count
  per_anchor = jnp.sum(negative_term - sim.unimodal_positives(sims), axis=0)
  loss = jnp.mean(per_anchor)
  new_state = SogCLRState(u=per_sample.scatter(state.u, index, jnp.mean(u_views, axis=0)))
  return loss, (new_state, {"u_mean": jnp.mean(u_views), "gamma": gamma})


def simclr_loss(h1: jax.Array, h2: jax.Array, index: jax.Array, state: SimCLRState,
                keep: jax.Array, *, temperature: float, gamma=None) -> tuple[jax.Array, tuple]:
  """SimCLR NT-Xent where kept negatives are renormalised to the full negative count.

    l_a(i) = -S_ii/T + log( exp(S_ii/T) + (n/k_i) sum_j keep_ij exp(S_ij/T) ),
  n = 2B - 2 negatives per row, loss = (1/B) sum_i [l_a(i) + l_b(i)] (sum over the two views).
  Computed with a weighted logsumexp, so it is stable at small temperatures. ``index``, ``state``
  and ``gamma`` exist for a uniform signature; SimCLR keeps no per-sample state.
  """
  del index, gamma
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  batch = sims.shape[1]
  positives = sim.unimodal_positives(sims) / temperature  # (2, B)
  _, safe_count = _safe_count(keep)
  n_neg = jnp.sum(sim.unimodal_negatives(batch), axis=-1).astype(jnp.float32)
  # Dropped negatives get -inf logits; kept ones are reweighted by n / k via a log offset.
  negatives = jnp.where(keep, sims / temperature + jnp.log(n_neg / safe_count)[..., None], -jnp.inf)
  logits = jnp.concatenate([positives[..., None], negatives], axis=-1)
  loss = jnp.mean(jnp.sum(jax.nn.logsumexp(logits, axis=-1) - positives, axis=0))
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


def _fastclip_direction(sims, positives, keep, logit_scale, u_old, gamma, u_floor=1e-35):
  """Batch estimate g (with gradient) and the new u (detached) for one anchor direction."""
  count, safe_count = _safe_count(keep[0])
  exps = jnp.where(keep[0], jnp.exp(logit_scale * (sims[0] - positives[:, None])), 0.0)
  estimate = jnp.sum(exps, axis=-1) / safe_count
  u_new = (1.0 - gamma) * u_old + gamma * sg(estimate)
  reset = (gamma < 1.0) & ((u_old < u_floor) | ~jnp.isfinite(u_old))
  u_new = jnp.where(reset, sg(estimate), u_new)
  u_new = jnp.where(count > 0, u_new, u_old)
  return estimate, u_new, count


def fastclip_loss(img: jax.Array, txt: jax.Array, index_img: jax.Array, index_txt: jax.Array,
                  state: FastCLIPState, keep_img: jax.Array, keep_txt: jax.Array, *,
                  logit_scale, gamma, version: str = "v3", rho: float = 6.5,
                  eps: float = 1e-14) -> tuple[jax.Array, tuple]:
  """FastCLIP (v1: constant temperature, the bimodal SogCLR; v3: learnable global temperature).

  With x, t the normalised features, ls = logit_scale = 1/tau, d_i = <x_i, t_i>:
    g^I_i = (1/n^I_i) sum_j M^I_ij exp(ls (x_i.t_j - d_i)),  g^T_i alike with S^T = t x^T;
    u = (1 - gamma) u_old + gamma g (detached; reset to g when gamma < 1 and u_old < 1e-35 or
    non-finite);  F = mean_i [g^I_i / (u^I_i + eps) + g^T_i / (u^T_i + eps)].
  v1: loss = F.  v3 (``multiply_tau``): loss = F / sg(ls) + rho / ls
    + mean_i [log(u^I_i + eps) + log(u^T_i + eps)] / (2 ls).
  The gradient is the full gradient of this expression (the reference's single-process value).

  Args:
    img, txt: ``(B, d)`` raw features (normalised here).
    index_img, index_txt: ``(B,)`` global indices of each pair's image and text.
    state: :class:`FastCLIPState`.
    keep_img, keep_txt: ``(1, B, B)`` keep-masks for image anchors and text anchors.
    logit_scale: ls (scalar; differentiable for v3).
    gamma: ``u`` rate (see :func:`cosine_gamma`).
    version: ``"v1"`` or ``"v3"``.
    rho, eps: v3's rho and the eps added to ``u``.

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
  g_img, u_img, _ = _fastclip_direction(s_img, positives, keep_img, logit_scale, u_old_img, gamma)
  g_txt, u_txt, _ = _fastclip_direction(s_txt, positives, keep_txt, logit_scale, u_old_txt, gamma)
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
