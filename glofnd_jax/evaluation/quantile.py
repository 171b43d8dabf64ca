"""The exact dataset-wide threshold GloFND estimates, and the error of lambda against it.

For anchor i, GloFND's ``lam[i]`` tracks the (1 - alpha) quantile of i's similarities to the
rest of the dataset. :func:`dataset_quantile` computes that quantile exactly from the current
features: per anchor, the N - 1 similarities to every other sample (itself excluded), with
NumPy's default ``linear`` interpolation (the same rule as
:func:`glofnd_jax.thresholds.batch_quantile`).

Which features: in training each sample is seen as two augmented views, and lambda is learned
from similarities between augmented views' projection-head embeddings. Augmentations are random,
so no fixed "dataset" of those similarities exists; the evaluation reference is taken between
embeddings of the **un-augmented** samples (the same encoder and projection head, in inference
mode, L2-normalised). The error therefore also contains the augmentation gap, not only the
estimator's error.

Memory: all N features are held on the device and anchors are processed in chunks, so the
largest intermediate is ``(chunk_size, N)``. This suits datasets that fit in memory (CIFAR,
ImageNet-100 with a modest chunk). Only the top ``~alpha * N + 2`` similarities of each row are
needed, so the cost per chunk is a matmul and a ``top_k``, not a full sort.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import similarity


@functools.partial(jax.jit, static_argnames=("k",))
def _chunk_top(features: jax.Array, anchor_index: jax.Array, *, k: int) -> jax.Array:
  """``(Q, k)`` largest similarities of each anchor to the *other* samples, descending."""
  sims = similarity.cosine(features[anchor_index], features)  # (Q, N)
  is_self = anchor_index[:, None] == jnp.arange(features.shape[0])[None, :]
  # -inf ranks last, and k <= N - 1, so the anchor's own similarity is never among the top k.
  return jax.lax.top_k(jnp.where(is_self, -jnp.inf, sims), k)[0]


def dataset_quantile(features, alpha: float, *, chunk_size: int = 256,
                     normalize: bool = True) -> np.ndarray:
  """Exact (1 - alpha) quantile of each sample's similarities to all other samples.

  Args:
    features: ``(N, d)`` numpy or jax array, N >= 2 (normalised here unless ``normalize=False``).
    alpha: the GloFND alpha in (0, 1); the quantile level is ``1 - alpha``.
    chunk_size: anchors per jitted call (memory ``O(chunk_size x N)``).
    normalize: L2-normalise the features first.

  Returns:
    ``(N,)`` float32: for row i, ``np.quantile(sims[i, j != i], 1 - alpha)`` (method ``linear``).
  """
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha={alpha!r} must lie in (0, 1).")
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size!r} must be >= 1.")
  num_samples = np.shape(features)[0]
  if num_samples < 2:
    raise ValueError("dataset_quantile needs at least 2 samples (each anchor needs another).")

  # NumPy's linear rule on m sorted values: position (1 - alpha) * (m - 1) from the bottom,
  # interpolating between its floor and the next value. Every row has the same m = N - 1, so the
  # position is one host float64 number.
  num_others = num_samples - 1
  position = (1.0 - alpha) * (num_others - 1)
  lower = int(math.floor(position))
  upper = min(lower + 1, num_others - 1)
  frac = position - lower
  # In descending order the ascending rank r sits at index m - 1 - r; we need down to `lower`.
  k = num_others - lower

  features = jnp.asarray(features, jnp.float32)
  if normalize:
    features = similarity.l2_normalize(features)
  chunk_size = min(chunk_size, num_samples)
  quantiles = []
  for start in range(0, num_samples, chunk_size):
    index = np.arange(start, min(start + chunk_size, num_samples))
    valid = len(index)
    index = np.pad(index, (0, chunk_size - valid))  # one shape per call: one compilation
    top = np.asarray(_chunk_top(features, jnp.asarray(index, jnp.int32), k=k))[:valid]
    low_value = top[:, num_others - 1 - lower]
    high_value = top[:, num_others - 1 - upper]
    quantiles.append(low_value + (high_value - low_value) * np.float32(frac))
  return np.concatenate(quantiles).astype(np.float32)


def lambda_error(lam, exact) -> dict:
  """How far learned thresholds are from the exact quantiles.

  Args:
    lam: ``(N,)`` learned thresholds (e.g. ``ThresholdState.lam``, without padding rows).
    exact: ``(N,)`` reference from :func:`dataset_quantile`.

  Returns:
    ``{"mean_abs_error", "median_abs_error", "max_abs_error", "mean_error", "num_samples"}``
    where ``mean_error`` is the mean of ``lam - exact`` (positive: lambda too high, fewer pairs
    flagged than alpha).
  """
  lam = np.asarray(lam, np.float64).reshape(-1)
  exact = np.asarray(exact, np.float64).reshape(-1)
  if lam.shape != exact.shape:
    raise ValueError(f"lambda_error: lam has shape {lam.shape}, exact {exact.shape}.")
  if lam.size == 0:
    raise ValueError("lambda_error: no samples.")
  diff = lam - exact
  return {
      "mean_abs_error": float(np.mean(np.abs(diff))),
      "median_abs_error": float(np.median(np.abs(diff))),
      "max_abs_error": float(np.max(np.abs(diff))),
      "mean_error": float(np.mean(diff)),
      "num_samples": int(lam.size),
  }
