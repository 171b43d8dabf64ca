"""Detection + loss in one pure function: what a train step differentiates.

:func:`unimodal_objective` (SogCLR or SimCLR on two views) and :func:`bimodal_objective`
(FastCLIP v1/v3 or SigLIP on image-text pairs) run, in the authors' order, the threshold update, the mask,
the ``u`` update and the loss. Both return ``loss, ObjectiveAux`` so that

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(features, ...)

gives the gradient and the new per-sample state in one call. Our trainers call exactly these
functions, and the golden-vector tests replay the authors' step sequences through them.

Detected false negatives are treated by ``config.treatment`` (:mod:`glofnd_jax.treatments`):
removed (the default), attracted as extra positives, or down-weighted by ``sigmoid((lambda_i -
s_ij) / tau_w)``.

Several alphas at once: ``alphas=(a1, a2, ...)`` keeps one threshold state and one loss state per
alpha (a tuple, one entry per alpha), computes each alpha's masked loss, and averages the losses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from glofnd_jax import detection, losses, siglip
from glofnd_jax import similarity as sim
from glofnd_jax import thresholds as thr
from glofnd_jax import treatments

sg = jax.lax.stop_gradient


class ObjectiveAux(NamedTuple):
  """Everything an objective returns besides the loss.

  Attributes:
    state: the new per-sample state (same type as the input state).
    metrics: scalar diagnostics (kept fraction, mean lambda, batch quantile, FN precision/recall
      when labels are given, ...). With several alphas, keys get an ``@alpha`` suffix.
    per_anchor: ``(B,)`` or ``(R, B)`` arrays of the first alpha, for tests and analysis (kept
      counts, flags below threshold, batch estimates). Unused outputs are removed by ``jax.jit``.
  """

  state: Any
  metrics: dict
  per_anchor: dict


def _alpha_configs(base: thr.ThresholdConfig, alphas: tuple[float, ...]):
  if not alphas:
    return (base,)
  return tuple(dataclasses.replace(base, alpha=float(a)) for a in alphas)


def _merge_metrics(per_alpha: list[dict], configs) -> dict:
  if len(per_alpha) == 1:
    return per_alpha[0]
  merged = {}
  for metrics, config in zip(per_alpha, configs):
    merged.update({f"{k}@{config.alpha:g}": v for k, v in metrics.items()})
  return merged


def _treatment_per_anchor(treatment: str, treated: treatments.Treated, suffix: str = "") -> dict:
  """``(R, B)`` attracted counts (``attract``) or weight sums (``reweight``), per row."""
  if treatment == "attract":
    return {f"attracted{suffix}": jnp.sum(treated.attract, axis=-1)}
  if treatment == "reweight":
    return {f"weight_sum{suffix}": jnp.sum(treated.neg_weight, axis=-1)}
  return {}


# ----------------------------------------------------------------------------- unimodal

@dataclasses.dataclass(frozen=True)
class UnimodalConfig:
  """Static settings of the unimodal objective.

  Attributes:
    loss: ``"sogclr"`` or ``"simclr"``.
    mode: detection mode, one of :data:`glofnd_jax.detection.MODES`.
    thresholds: threshold learner settings (alpha, lr, start epochs, ...).
    alphas: optional several alphas at once (overrides ``thresholds.alpha``); losses averaged.
    temperature: T.
    gamma: SogCLR moving-average rate.
    quantile_metric: report ``batch_quantile_mean`` in every mode (see
      :func:`glofnd_jax.detection.detect`; costs a ``top_k`` per step).
    treatment: what happens to detected false negatives, one of
      :data:`glofnd_jax.treatments.TREATMENTS` (``remove``, ``attract``, ``reweight``).
    tau_w: ``reweight``'s sigmoid temperature (similarity units).
  """

  loss: str = "sogclr"
  mode: str = "glofnd"
  thresholds: thr.ThresholdConfig = thr.ThresholdConfig()
  alphas: tuple[float, ...] = ()
  temperature: float = 0.1
  gamma: float = 0.9
  quantile_metric: bool = False
  treatment: str = "remove"
  tau_w: float = 0.05

  def __post_init__(self):
    if self.loss not in losses.UNIMODAL_LOSSES:
      raise ValueError(f"loss {self.loss!r} is unknown; choose one of "
                       f"{', '.join(losses.UNIMODAL_LOSSES)}.")
    detection.check_mode(self.mode)
    if not self.temperature > 0:
      raise ValueError(f"temperature={self.temperature!r} must be positive (e.g. 0.1).")
    if not 0.0 < self.gamma <= 1.0:
      raise ValueError(f"gamma={self.gamma!r} must lie in (0, 1] (SogCLR uses 0.9).")
    treatments.check_treatment(self.treatment, self.tau_w)
    _alpha_configs(self.thresholds, self.alphas)  # validates every alpha

  @property
  def threshold_configs(self) -> tuple[thr.ThresholdConfig, ...]:
    return _alpha_configs(self.thresholds, self.alphas)


@struct.dataclass
class UnimodalState:
  """Per-sample state, one entry per alpha: thresholds (learned modes only) and loss state."""

  thresholds: tuple[thr.ThresholdState, ...] | None
  loss: tuple[Any, ...]


def init_unimodal_state(num_samples: int, config: UnimodalConfig) -> UnimodalState:
  """Fresh per-sample state for ``num_samples`` samples (lambda = lam_init, moments and u = 0)."""
  configs = config.threshold_configs
  thresholds = None
  if config.mode in detection.LEARNED_MODES:
    size = 1 if config.mode == "glofnd_shared" else num_samples
    thresholds = tuple(thr.init_thresholds(size, c) for c in configs)
  if config.loss == "sogclr":
    loss_state = tuple(losses.init_sogclr(num_samples) for _ in configs)
  else:
    loss_state = tuple(losses.SimCLRState() for _ in configs)
  return UnimodalState(thresholds=thresholds, loss=loss_state)


def unimodal_objective(h1: jax.Array, h2: jax.Array, index: jax.Array, state: UnimodalState,
                       epoch, config: UnimodalConfig, labels: jax.Array | None = None,
                       constrain_rows=None) -> tuple[jax.Array, ObjectiveAux]:
  """GloFND-masked SogCLR/SimCLR on one batch of two views.

  Args:
    h1, h2: ``(B, d)`` raw features of the two views (the loss normalises them).
    index: ``(B,)`` int global dataset indices.
    state: :class:`UnimodalState`.
    epoch: scalar int epoch (may be traced).
    config: :class:`UnimodalConfig` (static).
    labels: optional ``(B,)`` class labels: needed by ``oracle``; enable FN precision/recall.
    constrain_rows: optional ``f(x) -> x`` applied to the ``(R, B, C)`` similarity rows and
      negative mask, e.g. :func:`glofnd_jax.sharding.constrain_similarity_rows` in a sharded step
      (each device then builds only its anchors' rows of the mask). No effect on the numbers.

  Returns:
    ``loss, ObjectiveAux``; ``per_anchor`` has ``kept`` ``(2, B)`` (kept negatives per row),
    ``below`` ``(2, B)`` (negatives at or under the threshold), and with ``attract`` also
    ``attracted`` ``(2, B)``, with ``reweight`` ``weight_sum`` ``(2, B)`` (the loss divisors).
  """
  batch = h1.shape[0]
  rows = constrain_rows or (lambda x: x)
  sims = rows(sim.unimodal_similarities(sim.l2_normalize(sg(h1)), sim.l2_normalize(sg(h2))))
  negatives = rows(sim.unimodal_negatives(batch))
  col_labels = None if labels is None else jnp.concatenate([labels, labels])
  loss_fn = losses.UNIMODAL_LOSSES[config.loss]

  total, new_thresholds, new_loss_states, per_alpha, per_anchor = 0.0, [], [], [], {}
  for k, tconfig in enumerate(config.threshold_configs):
    found = detection.detect(config.mode, sims, negatives, index, epoch, tconfig,
                             None if state.thresholds is None else state.thresholds[k],
                             labels, col_labels, quantile_metric=config.quantile_metric)
    treated = treatments.treat(config.treatment, sims, negatives, found.keep,
                               found.threshold_rows, config.tau_w)
    loss, (loss_state, loss_metrics) = loss_fn(h1, h2, index, state.loss[k], treated.neg_weight,
                                               temperature=config.temperature, gamma=config.gamma,
                                               attract=treated.attract)
    total = total + loss
    new_thresholds.append(found.thresholds)
    new_loss_states.append(loss_state)
    per_alpha.append({"loss": loss, **found.metrics, **loss_metrics,
                      **treatments.metrics(config.treatment, treated, negatives)})
    if k == 0:
      per_anchor = {"kept": jnp.sum(found.keep, axis=-1), "below": jnp.sum(found.below, axis=-1),
                    **_treatment_per_anchor(config.treatment, treated)}

  new_state = UnimodalState(
      thresholds=None if state.thresholds is None else tuple(new_thresholds),
      loss=tuple(new_loss_states))
  loss = total / len(config.threshold_configs)
  metrics = _merge_metrics(per_alpha, config.threshold_configs)
  metrics["loss"] = loss
  return loss, ObjectiveAux(new_state, metrics, per_anchor)


# ----------------------------------------------------------------------------- bimodal

@dataclasses.dataclass(frozen=True)
class BimodalConfig:
  """Static settings of the image-text objective (FastCLIP or SigLIP).

  Attributes:
    loss: ``"fastclip"`` (FastCLIP, see ``version``) or ``"siglip"`` (the sigmoid loss of
      :mod:`glofnd_jax.siglip`; ``version``, ``rho``, ``eps`` and the gamma schedule unused).
    impl: SigLIP's implementation: ``"dense"`` (each device its anchor rows against all columns)
      or ``"ring"`` (chunks passed around the mesh's data axis; needs ``mesh=``).
    treatment: what happens to flagged negatives (:data:`glofnd_jax.treatments.TREATMENTS`,
      applied to both anchor directions; SigLIP: ``"remove"`` or ``"attract"``).
    tau_w: ``reweight``'s sigmoid temperature.
    version: ``"v1"`` (constant temperature, FastCLIP-v1 / bimodal SogCLR) or ``"v3"``
      (learnable global temperature, ``multiply_tau``).
    mode: detection mode.
    thresholds: threshold settings, shared by the image-anchor and text-anchor thresholds.
    alphas: optional several alphas at once.
    rho: v3's rho.
    eps: added to ``u`` in the loss (1e-14).
    gamma_min, gamma_decay_epochs, gamma_schedule: the ``u`` rate schedule.
    quantile_metric: report ``batch_quantile_mean`` in every mode (costs a ``top_k`` per step).
  """

  loss: str = "fastclip"
  impl: str = "dense"
  treatment: str = "remove"
  version: str = "v3"
  mode: str = "glofnd"
  thresholds: thr.ThresholdConfig = thr.ThresholdConfig(alpha=1e-3, eps=1e-14)
  alphas: tuple[float, ...] = ()
  rho: float = 6.5
  eps: float = 1e-14
  gamma_min: float = 0.2
  gamma_decay_epochs: int = 18
  gamma_schedule: str = "cosine"
  quantile_metric: bool = False
  tau_w: float = 0.05

  def __post_init__(self):
    if self.loss not in ("fastclip", "siglip"):
      raise ValueError(f"loss {self.loss!r} is unknown; use 'fastclip' or 'siglip'.")
    if self.version not in ("v1", "v3"):
      raise ValueError(f"version {self.version!r} is unknown; use 'v1' or 'v3'.")
    detection.check_mode(self.mode)
    siglip.check_impl(self.impl, self.mode)
    treatments.check_treatment(self.treatment, self.tau_w)
    if self.loss == "siglip":
      siglip.check_treatment(self.treatment)
    elif self.impl != "dense":
      raise ValueError(f"impl={self.impl!r}: FastCLIP runs impl='dense'; the ring needs "
                       "loss='siglip'.")
    if self.impl == "ring" and (self.quantile_metric or self.thresholds.init_quantile):
      raise ValueError("impl='ring' never holds whole similarity rows: set quantile_metric=False "
                       "and thresholds.init_quantile=False (or use impl='dense').")
    if not 0.0 < self.gamma_min <= 1.0:
      raise ValueError(f"gamma_min={self.gamma_min!r} must lie in (0, 1].")
    if self.gamma_schedule not in ("cosine", "constant"):
      raise ValueError(f"gamma_schedule={self.gamma_schedule!r}: use 'cosine' or 'constant'.")
    _alpha_configs(self.thresholds, self.alphas)

  @property
  def threshold_configs(self) -> tuple[thr.ThresholdConfig, ...]:
    return _alpha_configs(self.thresholds, self.alphas)


@struct.dataclass
class BimodalState:
  """Per-sample state per alpha: image-anchor and text-anchor thresholds, FastCLIP ``u``
  (SigLIP: an empty :class:`~glofnd_jax.siglip.SigLIPState`)."""

  thresholds_img: tuple[thr.ThresholdState, ...] | None
  thresholds_txt: tuple[thr.ThresholdState, ...] | None
  loss: tuple[losses.FastCLIPState | siglip.SigLIPState, ...]


def init_bimodal_state(num_samples: int, config: BimodalConfig) -> BimodalState:
  configs = config.threshold_configs
  img = txt = None
  if config.mode in detection.LEARNED_MODES:
    size = 1 if config.mode == "glofnd_shared" else num_samples
    img = tuple(thr.init_thresholds(size, c) for c in configs)
    txt = tuple(thr.init_thresholds(size, c) for c in configs)
  if config.loss == "siglip":
    loss_state = tuple(siglip.SigLIPState() for _ in configs)
  else:
    loss_state = tuple(losses.init_fastclip(num_samples) for _ in configs)
  return BimodalState(thresholds_img=img, thresholds_txt=txt, loss=loss_state)


def bimodal_objective(img: jax.Array, txt: jax.Array, index_img: jax.Array, index_txt: jax.Array,
                      state: BimodalState, epoch, logit_scale, config: BimodalConfig,
                      labels: jax.Array | None = None, constrain_rows=None, *, bias=None,
                      mesh=None) -> tuple[jax.Array, ObjectiveAux]:
  """GloFND-masked FastCLIP or SigLIP on one batch of image-text pairs.

  Args:
    img, txt: ``(B, d)`` raw image and text features.
    index_img, index_txt: ``(B,)`` global indices (image thresholds/u by image index, text by
      text index).
    state: :class:`BimodalState`.
    epoch: scalar int epoch (gamma comes from the schedule at this epoch).
    logit_scale: 1 / temperature (differentiate through it for v3 and SigLIP).
    config: :class:`BimodalConfig`.
    labels: optional ``(B,)`` classes for ``oracle`` and FN precision/recall.
    constrain_rows: optional ``f(x) -> x`` applied to the ``(1, B, B)`` similarity rows and
      negative mask (see :func:`unimodal_objective`). No effect on the numbers.
    bias: SigLIP's learnable bias b (required by ``loss="siglip"``; differentiable).
    mesh: the mesh whose ``data`` axis the SigLIP ring runs over (required by ``impl="ring"``).

  Returns:
    ``loss, ObjectiveAux``; ``per_anchor`` holds ``kept_img/kept_txt`` (the loss divisors),
    ``below_img/below_txt``; dense: ``mask_img/mask_txt`` ``(B, B)``; FastCLIP: ``g_img/g_txt``, with
    ``attract`` also ``attracted_img/attracted_txt``, with ``reweight`` ``weight_sum_img/_txt``.
  """
  batch = img.shape[0]
  is_siglip = config.loss == "siglip"
  if is_siglip and bias is None:
    raise ValueError("loss='siglip' needs bias= (the learnable b, initialised to -10).")
  ring = config.impl == "ring"
  if ring and mesh is None:
    raise ValueError("impl='ring' needs mesh= (the mesh whose 'data' axis the ring runs over).")
  gamma = losses.cosine_gamma(epoch, config.gamma_min, config.gamma_decay_epochs,
                              config.gamma_schedule)
  rows = constrain_rows or (lambda x: x)
  if not ring:
    s_img, s_txt = sim.bimodal_similarities(sim.l2_normalize(sg(img)), sim.l2_normalize(sg(txt)))
    s_img, s_txt, negatives = rows(s_img), rows(s_txt), rows(sim.bimodal_negatives(batch))

  learned = state.thresholds_img is not None
  total, new_img, new_txt, new_loss, per_alpha, per_anchor = 0.0, [], [], [], [], {}
  for k, tconfig in enumerate(config.threshold_configs):
    thr_img = state.thresholds_img[k] if learned else None
    thr_txt = state.thresholds_txt[k] if learned else None
    loss_metrics, loss_state = {}, state.loss[k]
    if ring:
      loss, (thr_img, thr_txt, img_metrics, txt_metrics, anchors) = siglip.ring_step(
          img, txt, index_img, index_txt, thr_img, thr_txt, epoch, tconfig, mode=config.mode,
          treatment=config.treatment, logit_scale=logit_scale, bias=bias, mesh=mesh,
          labels=labels)
    else:
      found_img = detection.detect(config.mode, s_img, negatives, index_img, epoch, tconfig,
                                   thr_img, labels, labels, quantile_metric=config.quantile_metric)
      found_txt = detection.detect(config.mode, s_txt, negatives, index_txt, epoch, tconfig,
                                   thr_txt, labels, labels, quantile_metric=config.quantile_metric)
      thr_img, thr_txt = found_img.thresholds, found_txt.thresholds
      img_metrics, txt_metrics = dict(found_img.metrics), dict(found_txt.metrics)
      anchors = {
          "kept_img": jnp.sum(found_img.keep[0], -1), "kept_txt": jnp.sum(found_txt.keep[0], -1),
          "below_img": jnp.sum(found_img.below[0], -1),
          "below_txt": jnp.sum(found_txt.below[0], -1),
          "mask_img": found_img.keep[0], "mask_txt": found_txt.keep[0]}
      if is_siglip:
        neg_weight, attract = siglip.treat(siglip.dense_flags(found_img.keep[0], found_txt.keep[0]),
                                           config.treatment)
        loss = siglip.siglip_loss(img, txt, logit_scale=logit_scale, bias=bias,
                                  neg_weight=neg_weight, attract=attract)
      else:
        treated_img = treatments.treat(config.treatment, s_img, negatives, found_img.keep,
                                       found_img.threshold_rows, config.tau_w)
        treated_txt = treatments.treat(config.treatment, s_txt, negatives, found_txt.keep,
                                       found_txt.threshold_rows, config.tau_w)
        loss, (loss_state, loss_metrics) = losses.fastclip_loss(
            img, txt, index_img, index_txt, state.loss[k], treated_img.neg_weight,
            treated_txt.neg_weight, logit_scale=logit_scale, gamma=gamma,
            version=config.version, rho=config.rho, eps=config.eps,
            attract_img=treated_img.attract, attract_txt=treated_txt.attract)
        anchors.update(g_img=loss_metrics["g_img"], g_txt=loss_metrics["g_txt"])
        for side, treated in (("img", treated_img), ("txt", treated_txt)):
          side_metrics = treatments.metrics(config.treatment, treated, negatives)
          (img_metrics if side == "img" else txt_metrics).update(side_metrics)
          rows_of = _treatment_per_anchor(config.treatment, treated, f"_{side}")
          anchors.update({n: v[0] for n, v in rows_of.items()})
    total = total + loss
    new_img.append(thr_img)
    new_txt.append(thr_txt)
    new_loss.append(loss_state)
    metrics = {"loss": loss}
    if not is_siglip:
      metrics.update(u_img_mean=loss_metrics["u_img_mean"], u_txt_mean=loss_metrics["u_txt_mean"])
    metrics.update({f"img/{n}": v for n, v in img_metrics.items()})
    metrics.update({f"txt/{n}": v for n, v in txt_metrics.items()})
    per_alpha.append(metrics)
    if k == 0:
      per_anchor = anchors

  new_state = BimodalState(thresholds_img=tuple(new_img) if learned else None,
                           thresholds_txt=tuple(new_txt) if learned else None,
                           loss=tuple(new_loss))
  loss = total / len(config.threshold_configs)
  metrics = _merge_metrics(per_alpha, config.threshold_configs)
  metrics.update({"loss": loss, "logit_scale": sg(jnp.asarray(logit_scale))})
  if is_siglip:
    metrics["bias"] = sg(jnp.asarray(bias, jnp.float32))
  else:
    metrics["gamma"] = gamma
  return loss, ObjectiveAux(new_state, metrics, per_anchor)
