"""Feature extraction with a frozen network: the only place evaluation touches a model.

Evaluation (kNN, linear probe, transfer, false-negative and lambda diagnostics) works on the
numpy arrays this returns. The network's variables enter a jitted function as a plain,
non-donated argument behind ``jax.lax.stop_gradient``, and nothing is returned but features, so
no evaluation code can change or fine-tune the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def frozen_feature_fn(apply_fn: Callable[[Any, jax.Array], jax.Array]) -> Callable:
  """Jitted ``(variables, images) -> features`` with no gradient path to ``variables``.

  ``stop_gradient`` on the inputs and the output makes the derivative with respect to the
  variables exactly zero, even if a caller differentiates through it.
  """

  def features(variables, images):
    variables = jax.lax.stop_gradient(variables)
    return jax.lax.stop_gradient(apply_fn(variables, images))

  return jax.jit(features)


def _rebatch(images_iterable, batch_size: int):
  """Yields ``(batch, num_valid)`` with every batch exactly ``batch_size`` long (zero-padded)."""
  if isinstance(images_iterable, (np.ndarray, jax.Array)):
    images_iterable = [images_iterable]
  pending, pending_count = [], 0
  for item in images_iterable:
    item = np.asarray(item)
    pending.append(item)
    pending_count += item.shape[0]
    while pending_count >= batch_size:
      joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
      yield joined[:batch_size], batch_size
      rest = joined[batch_size:]
      pending, pending_count = ([rest] if len(rest) else []), len(rest)
  if pending_count:
    joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
    padding = [(0, batch_size - pending_count)] + [(0, 0)] * (joined.ndim - 1)
    yield np.pad(joined, padding), pending_count


def extract_features(apply_fn: Callable[[Any, jax.Array], jax.Array], params_and_state: Any,
                     images_iterable: Iterable | np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Features of every image, computed by a frozen network, as one float32 numpy array.

  Args:
    apply_fn: ``(params_and_state, images (b, ...)) -> features (b, d)`` in inference mode, e.g.
      ``lambda v, x: model.apply(v, x, train=False)`` for Linen, or
      ``lambda state, x: nnx.merge(graphdef, state)(x)`` for NNX (BatchNorm must use running
      averages: the last batch is zero-padded, and padding must not change the other rows).
    params_and_state: the variables pytree handed to ``apply_fn`` (params, batch stats, ...). It
      is only read: never donated, never updated.
    images_iterable: an array ``(N, ...)`` or an iterable of arrays ``(n_i, ...)`` of any batch
      sizes; rows are regrouped into batches of ``batch_size`` so the jit compiles once.
    batch_size: rows per call to ``apply_fn``.

  Returns:
    ``(N, d)`` float32 numpy features in input order (``(0,)`` if there were no images).
  """
  if batch_size < 1:
    raise ValueError(f"extract_features batch_size={batch_size!r} must be >= 1.")
  features_fn = frozen_feature_fn(apply_fn)
  outputs = []
  for batch, num_valid in _rebatch(images_iterable, batch_size):
    features = features_fn(params_and_state, jnp.asarray(batch))
    outputs.append(np.asarray(features, dtype=np.float32)[:num_valid])
  if not outputs:
    return np.zeros((0,), np.float32)
  return np.concatenate(outputs)
