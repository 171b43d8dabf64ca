"""The non-finite policy, all of it: flags in the step, skipping in the step, stopping in the loop.

``config.nonfinite``:

* ``"stop"`` (default): the step adds ``nonfinite/<array>`` flags to its metrics (the loss,
  gradients, parameters, optimiser state, batch statistics, and the batch rows of every
  per-sample array, the only rows a step writes); :class:`Monitor` raises on the first flagged
  step before anything non-finite is saved.
* ``"skip"``: the step also keeps the old state when any flag is set, inside the step (no host
  round trip), and counts the skipped batches in ``TrainState.skipped_batches``.
* ``"off"``: no checks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import per_sample as per_sample_lib

# States are ``glofnd_jax.training.step.TrainState`` (not imported: the step imports this module).
TrainState = Any

POLICIES = ("stop", "skip", "off")
PREFIX = "nonfinite/"


def _all_finite(tree) -> jax.Array:
  """``()`` bool: every floating-point element of ``tree`` is finite (True for no such leaf)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _batch_index(batch: dict) -> jax.Array:
  """Every global dataset index the batch addresses (``index``, ``index_img``, ``index_txt``)."""
  return jnp.concatenate([batch[k].reshape(-1) for k in sorted(batch) if k.startswith("index")])


def _is_per_sample_rows(leaf, num_samples_padded: int) -> bool:
  return jnp.ndim(leaf) >= 1 and leaf.shape[0] == num_samples_padded


def _per_sample_rows(per_sample, index: jax.Array, num_samples_padded: int):
  """``per_sample`` with every ``(N_pad, ...)`` leaf replaced by its batch rows ``(R, ...)``
  (other leaves, e.g. shared ``(1,)`` thresholds, as they are)."""
  return jax.tree.map(
      lambda leaf: (per_sample_lib.gather(leaf, index)
                    if _is_per_sample_rows(leaf, num_samples_padded) else leaf), per_sample)


def _write_rows(per_sample, rows, index: jax.Array, num_samples_padded: int):
  """``per_sample`` with ``rows`` (from :func:`_per_sample_rows`) written at ``index``."""
  return jax.tree.map(
      lambda leaf, leaf_rows: (per_sample_lib.scatter(leaf, index, leaf_rows)
                               if _is_per_sample_rows(leaf, num_samples_padded) else leaf),
      per_sample, rows)


def nonfinite_flags(new: TrainState, metrics: dict, batch: dict, num_samples_padded: int,
                    new_rows: Any = None) -> dict:
  """``{array name: () bool}``, True where a step produced a non-finite value.

  Args:
    new: the state the step returned.
    metrics: its metrics (``loss`` and ``grad_norm`` are read).
    batch: the batch (every ``index*`` entry is read).
    num_samples_padded: N_pad; leaves with this leading dimension are per-sample arrays.
    new_rows: ``new.per_sample`` at the batch rows, if the caller has gathered them already.

  Per-sample arrays are checked only at the batch's rows: a step writes no other row, and the
  state before the step was finite, so this is exact at O(batch) cost.
  """
  flags = {"loss": ~jnp.isfinite(metrics["loss"]),
           "gradients": ~jnp.isfinite(metrics["grad_norm"]),
           "params": ~_all_finite(new.params),
           "batch_stats": ~_all_finite(new.batch_stats),
           "opt_state": ~_all_finite(new.opt_state)}
  if new_rows is None:
    new_rows = _per_sample_rows(new.per_sample, _batch_index(batch), num_samples_padded)
  for path, rows in jax.tree_util.tree_flatten_with_path(new_rows)[0]:
    if jnp.issubdtype(rows.dtype, jnp.inexact):
      flags["per_sample" + jax.tree_util.keystr(path)] = ~jnp.all(jnp.isfinite(rows))
  return flags


def _keep_old_state(bad: jax.Array, old: TrainState, new: TrainState, old_rows, new_rows,
                    index: jax.Array, num_samples_padded: int) -> TrainState:
  """``old`` where ``bad`` else ``new``, for every leaf but the step count (a skipped batch is
  still consumed). Per-sample arrays are restored only at the batch rows (O(batch), in place):
  ``old_rows`` / ``new_rows`` are ``old`` / ``new`` per-sample state at ``index``."""
  pick = lambda n, o: jnp.where(bad, o, n)

  def per_sample_leaf(n, o, n_rows, o_rows):
    if not _is_per_sample_rows(n, num_samples_padded):
      return pick(n, o)
    # The written rows depend on rows gathered from ``n`` itself, so the scatter runs after that
    # gather and updates ``n``'s buffer in place.
    return per_sample_lib.scatter(n, index, pick(n_rows, o_rows))

  return new.replace(
      params=jax.tree.map(pick, new.params, old.params),
      batch_stats=jax.tree.map(pick, new.batch_stats, old.batch_stats),
      opt_state=jax.tree.map(pick, new.opt_state, old.opt_state),
      per_sample=jax.tree.map(per_sample_leaf, new.per_sample, old.per_sample, new_rows,
                              old_rows),
      skipped_batches=old.skipped_batches + bad.astype(jnp.int32))


def guard(step_fn, policy: str, num_samples_padded: int):
  """Wrap ``step_fn`` with the non-finite ``policy`` (see the module docstring)."""
  if policy not in POLICIES:
    raise ValueError(f"nonfinite={policy!r} is unknown; choose one of "
                     f"{', '.join(POLICIES)}.")
  if policy == "off":
    return step_fn

  def guarded(state: TrainState, batch: dict):
    if policy == "stop":
      new_state, metrics = step_fn(state, batch)
      flags = nonfinite_flags(new_state, metrics, batch, num_samples_padded)
    else:
      index = _batch_index(batch)
      old_rows = _per_sample_rows(state.per_sample, index, num_samples_padded)
      # The old batch rows must be read before the step writes the donated per-sample buffers in
      # place, or XLA copies every per-sample shard to keep the old values alive. Writing them
      # back (a no-op, O(batch)) makes the step's input depend on that read, which orders it.
      state = state.replace(per_sample=_write_rows(state.per_sample, old_rows, index,
                                                   num_samples_padded))
      new_state, metrics = step_fn(state, batch)
      new_rows = _per_sample_rows(new_state.per_sample, index, num_samples_padded)
      flags = nonfinite_flags(new_state, metrics, batch, num_samples_padded, new_rows)
      bad = jnp.any(jnp.stack(list(flags.values())))
      new_state = _keep_old_state(bad, state, new_state, old_rows, new_rows, index,
                                  num_samples_padded)
      metrics["skipped_batches"] = new_state.skipped_batches.astype(jnp.float32)
    metrics.update({PREFIX + k: v.astype(jnp.float32) for k, v in flags.items()})
    return new_state, metrics

  return guarded


def check_logged_means(values: dict, step: int) -> None:
  """Fallback for steps built without non-finite flags: check the logged means."""
  for name in ("train/loss", "detector/img/lambda_mean", "train/u_mean"):
    if name in values and not np.isfinite(values[name]):
      raise FloatingPointError(f"non-finite {name}={values[name]} at step {step}; the last good "
                               "checkpoint is kept. Lower the learning rate or check the data.")


class Monitor:
  """Collects the step's ``nonfinite/<array>`` flags and raises on the first bad step.

  The flags stay on the device until :meth:`check`, which the loop calls before logging and
  before every save, so there is no host round trip per step and no non-finite state is ever
  saved.
  """

  def __init__(self, policy: str):
    self.policy = policy
    self.seen_flags = False
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    """Take the flags out of ``metrics`` (in place) and remember them for ``step``."""
    flags = {k[len(PREFIX):]: metrics.pop(k) for k in list(metrics)
             if k.startswith(PREFIX)}
    if flags:
      self.seen_flags = True
      if self.policy == "stop":
        self._pending.append((step, flags))

  def check(self, checkpointer) -> None:
    """Raise ``FloatingPointError`` naming the first non-finite step and its arrays."""
    pending, self._pending = self._pending, []
    if not pending:
      return
    for (step, _), flags in zip(pending, jax.device_get([f for _, f in pending])):
      bad = [name for name, flag in flags.items() if flag]
      if bad:
        checkpointer.wait()  # a save in flight holds an earlier, finite state: let it finish
        kept = checkpointer.latest_step()
        kept = (f"the last good checkpoint (step {kept}) in {checkpointer.directory} is kept"
                if kept is not None else "no checkpoint had been saved yet")
        raise FloatingPointError(
            f"non-finite value(s) at step {step} in: {', '.join(bad)}. The run stopped before "
            f"saving this state; {kept}. Lower the learning rate (config.optim.lr, "
            "config.glofnd.lr), check the data, or set config.nonfinite='skip' to skip such "
            "batches.")
