"""Feature extraction with a frozen network: the only place evaluation touches a model.

Every evaluator embeds through :func:`extract_features`, the one batching loop: over arrays of
any batch sizes (regrouped and zero-padded here) or over a data pipeline's padded batch dicts.
Evaluation (kNN, linear probe, transfer, retrieval, zero-shot, false-negative and lambda
diagnostics) works on the numpy arrays it returns. The network's variables enter a jitted
function as a plain, non-donated argument behind ``jax.lax.stop_gradient``, and nothing is
returned but features, so no evaluation code can change or fine-tune the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import similarity


def frozen_feature_fn(apply_fn: Callable[..., Any]) -> Callable:
  """Jitted ``(variables, *inputs) -> features`` with no gradient path to ``variables``.

  ``stop_gradient`` on the inputs and the output makes the derivative with respect to the
  variables exactly zero, even if a caller differentiates through it. The result can be handed
  to :func:`extract_features` in place of ``apply_fn``: reusing it across calls compiles once
  per batch shape.
  """

  def features(variables, *inputs):
    variables = jax.lax.stop_gradient(variables)
    return jax.lax.stop_gradient(apply_fn(variables, *inputs))

  frozen = jax.jit(features)
  frozen.is_frozen_feature_fn = True
  return frozen


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


def _array_batches(images_iterable, batch_size: int):
  """Arrays regrouped into ``batch_size`` rows: ``(inputs, keep, carried)`` per batch."""
  for batch, num_valid in _rebatch(images_iterable, batch_size):
    yield (batch,), np.arange(batch_size) < num_valid, {}


def _dict_batches(batches, inputs: Sequence[str], valid: str, carry: Sequence[str]):
  """A pipeline's padded batch dicts (padding rows have ``batch[valid] < 0``), as above."""
  for batch in batches:
    yield (tuple(batch[name] for name in inputs), np.asarray(batch[valid]) >= 0,
           {name: batch[name] for name in carry})


def extract_features(apply_fn: Callable[..., Any], params_and_state: Any,
                     batches: Iterable | np.ndarray, batch_size: int = 256, *,
                     inputs: Sequence[str] | None = None, valid: str = "index",
                     carry: Sequence[str] = ()):
  """Features of every example, computed by a frozen network, as float32 numpy arrays.

  Two kinds of ``batches``:

  * arrays (``inputs=None``): an array ``(N, ...)`` or an iterable of arrays ``(n_i, ...)`` of
    any batch sizes; rows are regrouped into batches of ``batch_size`` (the last zero-padded) so
    the jit compiles once, and ``apply_fn(params_and_state, x)`` is called on each.
  * a data pipeline's batch dicts (``inputs`` names the fields handed to ``apply_fn``, in
    order): batches come as they are (``drop_remainder=False`` pads the last one, marking its
    padding rows with ``batch[valid] < 0``, which are dropped); ``batch_size`` is unused.

  Args:
    apply_fn: ``(params_and_state, *inputs) -> features`` in inference mode, any pytree of
      ``(b, ...)`` arrays (e.g. a ``(features, projections)`` pair), e.g.
      ``lambda v, x: model.apply(v, x, train=False)`` for Linen, or
      ``lambda state, x: nnx.merge(graphdef, state)(x)`` for NNX (BatchNorm must use running
      averages: padding rows must not change the other rows). A function from
      :func:`frozen_feature_fn` is used as it is (reuse it: one compilation).
    params_and_state: the variables pytree handed to ``apply_fn`` (params, batch stats, ...). It
      is only read: never donated, never updated.
    batches: see above.
    batch_size: rows per call to ``apply_fn`` (arrays only).
    inputs: batch-dict fields passed to ``apply_fn``; None for arrays.
    valid: the batch-dict field whose negative entries mark padding rows.
    carry: batch-dict fields returned as they are (padding rows dropped), e.g. labels.

  Returns:
    Arrays: the features in input order, ``apply_fn``'s output structure with every leaf an
    ``(N, ...)`` float32 numpy array (a plain ``(0,)`` array if there were no images). Batch
    dicts: ``(features, {name: (N, ...) numpy array for name in carry})``.
  """
  if inputs is None:
    if batch_size < 1:
      raise ValueError(f"extract_features batch_size={batch_size!r} must be >= 1.")
    padded = _array_batches(batches, batch_size)
  else:
    padded = _dict_batches(batches, tuple(inputs), valid, tuple(carry))
  features_fn = (apply_fn if getattr(apply_fn, "is_frozen_feature_fn", False)
                 else frozen_feature_fn(apply_fn))
  outputs, carried = [], {name: [] for name in carry}
  for batch_inputs, keep, fields in padded:
    features = features_fn(params_and_state, *(jnp.asarray(x) for x in batch_inputs))
    outputs.append(jax.tree.map(lambda f: np.asarray(f, dtype=np.float32)[keep], features))
    for name, value in fields.items():
      carried[name].append(np.asarray(value)[keep])
  if inputs is None and not outputs:
    return np.zeros((0,), np.float32)
  if not outputs:
    raise ValueError("extract_features: the batch iterator yielded no batches (empty source?).")
  features = jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
  if inputs is None:
    return features
  return features, {name: np.concatenate(parts) for name, parts in carried.items()}


def normalized(features) -> np.ndarray:
  """Row-wise L2-normalised float32 numpy copy of ``(N, d)`` features (as the training loss)."""
  return np.asarray(similarity.l2_normalize(jnp.asarray(features, jnp.float32)))


def state_variables(state) -> dict:
  """The variables a train state's model is applied with: ``params`` and ``batch_stats``."""
  return {"params": state.params, "batch_stats": state.batch_stats}
