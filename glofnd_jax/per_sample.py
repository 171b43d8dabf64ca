"""Gather and scatter of per-sample ``(N,)`` arrays by global dataset index.

These are the only places the package reads or writes per-sample state (lambda, its optimiser
moments, SogCLR/FastCLIP ``u``), so the rules live here once:

* Duplicate indices in one batch (samplers that pad or resample can produce them): every copy
  reads the old value; on write, the **last occurrence in batch order wins**. Plain
  ``x.at[idx].set(v)`` would apply duplicates in an unspecified order.
* Out-of-range indices never corrupt state: reads return NaN (so the run's non-finite check
  catches them) and writes are dropped. Host code should call :func:`check_indices` on every
  batch, which raises a clear error instead.

Inside ``jax.jit`` with the arrays sharded along N, both compile to O(batch) communication.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gather(values: jax.Array, index: jax.Array) -> jax.Array:
  """``values[index]`` along the leading axis; out-of-range rows read as NaN (0 for integers)."""
  fill = jnp.nan if jnp.issubdtype(values.dtype, jnp.inexact) else 0
  return values.at[index].get(mode="fill", fill_value=fill)


def last_occurrence(index: jax.Array) -> jax.Array:
  """``(B,)`` bool: True at the last position (in batch order) of each distinct index."""
  order = jnp.argsort(index, stable=True)
  ordered = index[order]
  is_last_sorted = jnp.append(ordered[1:] != ordered[:-1], True)
  return jnp.zeros(index.shape, bool).at[order].set(is_last_sorted)


def scatter(values: jax.Array, index: jax.Array, rows: jax.Array) -> jax.Array:
  """``values`` with ``rows`` written at ``index``; duplicates: last in batch order wins."""
  target = jnp.where(last_occurrence(index), index, values.shape[0])
  return values.at[target].set(rows.astype(values.dtype), mode="drop")


def check_indices(index, num_samples: int, name: str = "index") -> None:
  """Raise a clear ``ValueError`` if any host-side index is outside ``[0, num_samples)``."""
  index = np.asarray(index)
  if not np.issubdtype(index.dtype, np.integer):
    raise ValueError(f"{name} has dtype {index.dtype}; dataset indices must be integers.")
  if index.size and (index.min() < 0 or index.max() >= num_samples):
    bad = index[(index < 0) | (index >= num_samples)]
    raise ValueError(
        f"{name} holds {bad.size} value(s) outside [0, {num_samples}) (e.g. {int(bad[0])}): every "
        f"sample needs a global dataset index in [0, {num_samples}), the per-sample state's "
        "size. Fix the data source's indices, or build the per-sample state for the whole "
        "dataset (num_samples = its size).")


def check_capacity(per_sample_state, num_samples: int, name: str = "per-sample state") -> None:
  """Raise a clear ``ValueError`` if a per-sample array has fewer than ``num_samples`` rows.

  Every ``(N,)`` leaf (lambda, its moments, ``u``) must hold a row for each sample of the
  dataset; a state made for a smaller dataset would read NaN for the samples past its end.
  Shared ``(1,)`` thresholds and scalars are not per-sample and are skipped.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(per_sample_state)[0]:
    rows = np.shape(leaf)[0] if np.ndim(leaf) else None
    if rows is not None and 1 < rows < num_samples:
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} has {rows} rows but the dataset has {num_samples} "
          f"samples: the per-sample arrays must cover the whole dataset. Initialise the state "
          f"with num_samples={num_samples} (or train on the dataset the state was made for).")
