"""Network optimisers and learning-rate schedules (the thresholds have their own, see thresholds).

SimCLR/SogCLR recipe: LARS with the base learning rate scaled by the global batch (``linear``:
lr * B / 256; ``sqrt``: lr * sqrt(B), as SogCLR's ImageNet-100 recipe), linear warmup then cosine
decay to 0, weight decay and trust-ratio adaptation masked off biases and BatchNorm parameters.
AdamW and SGD (momentum) are options for other settings.
"""

from __future__ import annotations

import math

import jax
import optax

OPTIMIZERS = ("lars", "adamw", "sgd")
LR_SCALINGS = ("none", "linear", "sqrt")


def scaled_lr(base_lr: float, global_batch: int, scaling: str) -> float:
  """Peak learning rate from the base rate and the global batch size."""
  if scaling not in LR_SCALINGS:
    raise ValueError(f"optim.lr_scaling={scaling!r} is unknown; choose one of "
                     f"{', '.join(LR_SCALINGS)}.")
  if not base_lr > 0:
    raise ValueError(f"optim.lr={base_lr!r} must be positive.")
  if scaling == "linear":
    return base_lr * global_batch / 256.0
  if scaling == "sqrt":
    return base_lr * math.sqrt(global_batch)
  return base_lr


def decay_mask(params):
  """True for weights that get weight decay / trust ratio: kernels (ndim > 1), not biases or BN."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to 0 at the end."""
  warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, max(int(total_steps), 1))


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, b1: float = 0.9, b2: float = 0.999,
                   trust_coefficient: float = 1e-3) -> optax.GradientTransformation:
  """The network optimiser ``name`` (``lars``, ``adamw``, ``sgd``) with masked weight decay."""
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
  raise ValueError(f"optim.name={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}.")
