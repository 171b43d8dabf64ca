"""Orbax checkpoints of the whole train state and the data-iterator position, saved together.

A checkpoint holds everything a run needs to continue exactly: parameters, BatchNorm statistics,
optimiser state, every per-sample array (lambda, its moments, ``u``), the PRNG key and the step,
plus the grain iterator state. Saves are asynchronous and atomic (orbax writes to a temporary
directory and renames it when complete, so a half-written checkpoint is never restored); the last
``max_to_keep`` are kept. Restoring takes an abstract target whose leaves carry the *current*
shardings, so a run saved on 8 devices restores onto 4.
"""

from __future__ import annotations

import pathlib

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for ``(train_state, data_iterator)`` pairs."""

  def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Start an (async) save of ``state`` and the iterator position at ``step``."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, state_target, data_iterator=None, step: int | None = None):
    """Restore onto ``state_target`` (a state or its ``jax.ShapeDtypeStruct`` tree with
    shardings); the iterator, when given, is moved to the saved position in place."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree.map(_abstract, state_target)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], step

  def wait(self) -> None:
    """Block until pending async saves are complete (before exit or reading files)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _abstract(leaf):
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf
