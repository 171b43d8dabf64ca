"""Network optimisers and learning-rate schedules (the thresholds have their own, see thresholds).

SimCLR/SogCLR recipe: LARS with the base learning rate scaled by the global batch (``linear``:
lr * B / 256; ``sqrt``: lr * sqrt(B), as SogCLR's ImageNet-100 recipe), linear warmup then cosine
decay to 0, weight decay and trust-ratio adaptation masked off biases and BatchNorm parameters.
AdamW and SGD (momentum) are options for other settings.

CLIP (image-text) recipe, as FastCLIP's training code builds its parameter groups
(``optax.multi_transform``):

* the network: AdamW with the learning rate of :func:`warmup_cosine` (linear warmup over a
  number of *steps*, then cosine to 0), weight decay on kernels and embeddings (``ndim >= 2``)
  but not on biases, norm scales or the class token;
* ``logit_scale`` (log of 1/temperature): Adam without weight decay at its own learning rate
  ``lr_tau``, followed by the clamp ``0 <= logit_scale <= log(100)``. Schedules:
  ``'step_thresh'`` (FastCLIP's: ``lr_tau``, times 1/3 once the temperature ``exp(-logit_scale)``
  is at or below 0.03, read from the current parameter at every step by a pure optax
  transformation), ``'const'`` or ``'cosine'`` (the network's shape). With a constant
  temperature (FastCLIP-v1) the group is frozen (``optax.set_to_zero``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("lars", "adamw", "sgd")
LR_SCALINGS = ("none", "linear", "sqrt")


def _check(field: str, value, choices: tuple[str, ...] | None = None) -> None:
  """One clear error for ``optim.<field>``: an unknown choice, or a rate that is not > 0."""
  if choices is not None and value not in choices:
    raise ValueError(f"optim.{field}={value!r} is unknown; choose one of {', '.join(choices)}.")
  if choices is None and not value > 0:
    raise ValueError(f"optim.{field}={value!r} must be positive.")


def scaled_lr(base_lr: float, global_batch: int, scaling: str) -> float:
  """Peak learning rate from the base rate and the global batch size."""
  _check("lr_scaling", scaling, LR_SCALINGS)
  _check("lr", base_lr)
  if scaling == "linear":
    return base_lr * global_batch / 256.0
  if scaling == "sqrt":
    return base_lr * math.sqrt(global_batch)
  return base_lr


def decay_mask(params):
  """True for weights that get weight decay / trust ratio: kernels and embeddings (ndim >= 2),
  not biases, norm scales or the class token (both recipes)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to 0 at the end."""
  warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, max(int(total_steps), 1))


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, b1: float = 0.9, b2: float = 0.999,
                   trust_coefficient: float = 1e-3) -> optax.GradientTransformation:
  """The network optimiser ``name`` (``lars``, ``adamw``, ``sgd``) with masked weight decay."""
  _check("name", name, OPTIMIZERS)
  if weight_decay < 0:
    raise ValueError(f"optim.weight_decay={weight_decay!r} must be >= 0.")
  if name == "lars":
    return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                      trust_ratio_mask=decay_mask, momentum=momentum,
                      trust_coefficient=trust_coefficient)
  if name == "adamw":
    return optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                       optax.sgd(schedule, momentum=momentum))
  raise AssertionError(name)  # _check above knows every name


# ----------------------------------------------------------------------------- CLIP

TEMPERATURE_SCHEDULES = ("step_thresh", "const", "cosine")
LOGIT_SCALE = "logit_scale"


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """FastCLIP's ``cosine_lr``: ``base (t + 1) / warmup`` for ``t < warmup``, then
  ``base (1 + cos(pi (t - warmup) / (total - warmup))) / 2``."""
  warmup_steps, total_steps = int(warmup_steps), int(total_steps)
  if base_lr <= 0:
    raise ValueError(f"learning rate {base_lr!r} must be positive.")
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * (step + 1.0) / max(warmup_steps, 1)
    cos = 0.5 * (1.0 + jnp.cos(jnp.pi * (step - warmup_steps) / decay_steps)) * base_lr
    return jnp.where(step < warmup_steps, warm, cos)

  return schedule


def _on_logit_scale(name: str, fn) -> optax.GradientTransformation:
  """``optax.stateless(fn)`` for an ``fn(updates, params)`` that reads the current logit scale."""

  def update(updates, params):
    if params is None:
      raise ValueError(f"{name} needs params (the current logit scale).")
    return fn(updates, params)

  return optax.stateless(update)


def scale_by_temperature_lr(lr_tau: float, *, thresholds: tuple[float, ...] = (0.03,),
                            ratios: tuple[float, ...] = (1.0 / 3.0,)
                            ) -> optax.GradientTransformation:
  """``update -> -lr * update`` with ``lr`` from the current temperature (``step_thresh``).

  For each parameter leaf ``s`` (a log inverse temperature), ``tau = exp(-s)``; the rate is
  ``lr_tau`` times ``ratios[k]`` for the last ``k`` such that ``tau <= thresholds[0..k]`` all
  hold (FastCLIP: one threshold 0.03, ratio 1/3). Pure: it reads ``params``, keeps no state.
  """
  if len(thresholds) != len(ratios):
    raise ValueError("thresholds and ratios must have the same length.")

  def scale(update, log_scale):
    tau = jnp.exp(-log_scale.astype(jnp.float32))
    lr, below_all = jnp.float32(lr_tau), jnp.bool_(True)
    for thresh, ratio in zip(thresholds, ratios):
      below_all = below_all & (tau <= thresh)
      lr = jnp.where(below_all, lr_tau * ratio, lr)
    return (-lr * update).astype(update.dtype)

  return _on_logit_scale("scale_by_temperature_lr",
                         lambda updates, params: jax.tree.map(scale, updates, params))


def clamp_logit_scale(max_scale: float = 100.0) -> optax.GradientTransformation:
  """Projects ``params + updates`` onto ``[0, log(max_scale)]`` (CLIP clamps after each step)."""
  upper = math.log(max_scale)
  return _on_logit_scale("clamp_logit_scale", lambda updates, params: jax.tree.map(
      lambda u, p: jnp.clip(p + u, 0.0, upper) - p, updates, params))


def param_labels(params) -> dict:
  """``'temperature'`` for the top-level ``logit_scale`` leaf, ``'network'`` for the rest."""
  labels = jax.tree.map(lambda _: "network", params)
  if isinstance(labels, dict) and LOGIT_SCALE in labels:
    labels = dict(labels)
    labels[LOGIT_SCALE] = "temperature"
  return labels


def make_clip_optimizer(schedule: optax.Schedule, *, weight_decay: float, b1: float = 0.9,
                        b2: float = 0.999, eps: float = 1e-8, learn_temperature: bool = True,
                        lr_tau: float = 2e-4, temperature_schedule: str = "step_thresh",
                        warmup_steps: int = 0, total_steps: int = 1,
                        max_logit_scale: float = 100.0) -> optax.GradientTransformation:
  """The two-group optimiser of the module docstring.

  Args:
    schedule: the network's learning rate (e.g. :func:`warmup_cosine`).
    weight_decay: AdamW decay of the network's kernels (FastCLIP CC3M: 0.1).
    b1, b2, eps: Adam settings of both groups (CLIP RN50: 0.9, 0.999, 1e-8; ViT: 0.98, 1e-6).
    learn_temperature: False freezes ``logit_scale`` (constant temperature, FastCLIP-v1).
    lr_tau: the temperature's learning rate.
    temperature_schedule: ``'step_thresh'``, ``'const'`` or ``'cosine'`` (uses ``warmup_steps``,
      ``total_steps``).
    max_logit_scale: the clamp (100).
  """
  if weight_decay < 0:
    raise ValueError(f"optim.weight_decay={weight_decay!r} must be >= 0.")
  network = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                        mask=decay_mask)
  if not learn_temperature:
    temperature = optax.set_to_zero()
  else:
    _check("temperature_schedule", temperature_schedule, TEMPERATURE_SCHEDULES)
    _check("lr_tau", lr_tau)
    if temperature_schedule == "step_thresh":
      rate = scale_by_temperature_lr(lr_tau)
    elif temperature_schedule == "const":
      rate = optax.scale(-lr_tau)
    else:
      rate = optax.scale_by_learning_rate(warmup_cosine(lr_tau, warmup_steps, total_steps))
    temperature = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), rate,
                              clamp_logit_scale(max_logit_scale))
  return optax.multi_transform({"network": network, "temperature": temperature}, param_labels)
