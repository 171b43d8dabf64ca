"""Cosine-similarity rows and negative masks in the package's ``(R, B, C)`` layout.

Unimodal (two views a, b of B samples): R = 2 rows per anchor, C = 2B columns,

    S_a = [z_a z_b^T, z_a z_a^T],   S_b = [z_b z_a^T, z_b z_b^T]

so the positive of row i is column i and the anchor itself is column B + i; the other 2B - 2
columns are its negatives. Bimodal (images x, texts t): image anchors use S^I = x t^T, text
anchors S^T = t x^T, one row each (R = 1); the negatives of row i are the B - 1 columns j != i.

Matmuls run in float32 with HIGHEST precision: lambda is compared against these values, and a
bf16/TF32 matmul moves a similarity by ~1e-3, enough to flip the comparison.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Row-wise L2 normalisation in float32 (as ``torch.nn.functional.normalize``)."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b.T`` for already-normalised rows, float32, full precision."""
  return jnp.matmul(a, b.T, precision=_HIGHEST)


def unimodal_similarities(z_a: jax.Array, z_b: jax.Array) -> jax.Array:
  """``(2, B, 2B)`` rows ``[S_a, S_b]`` of two normalised views ``(B, d)``."""
  s_ab, s_aa, s_bb = cosine(z_a, z_b), cosine(z_a, z_a), cosine(z_b, z_b)
  s_a = jnp.concatenate([s_ab, s_aa], axis=1)
  s_b = jnp.concatenate([s_ab.T, s_bb], axis=1)
  return jnp.stack([s_a, s_b])


def unimodal_negatives(batch_size: int) -> jax.Array:
  """``(2, B, 2B)`` bool: every column except the positive (i) and self (B + i)."""
  rows = jnp.arange(batch_size)[:, None]
  cols = jnp.arange(2 * batch_size)[None, :]
  negatives = (cols != rows) & (cols != rows + batch_size)
  return jnp.broadcast_to(negatives, (2, batch_size, 2 * batch_size))


def unimodal_positives(sims: jax.Array) -> jax.Array:
  """``(2, B)`` positive similarities (column i of row i, in both views)."""
  batch = sims.shape[1]
  return sims[:, jnp.arange(batch), jnp.arange(batch)]


def bimodal_similarities(x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(1, B, B)`` rows for image anchors (S^I = x t^T) and text anchors (S^T = t x^T)."""
  s_img = cosine(x, t)
  return s_img[None], s_img.T[None]


def bimodal_negatives(batch_size: int) -> jax.Array:
  """``(1, B, B)`` bool: every column except the paired one."""
  return ~jnp.eye(batch_size, dtype=bool)[None]
