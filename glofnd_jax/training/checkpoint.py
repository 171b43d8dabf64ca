"""Orbax checkpoints of the whole train state and the data-iterator position, saved together.

A checkpoint holds everything a run needs to continue exactly: parameters, BatchNorm statistics,
optimiser state, every per-sample array (lambda, its moments, ``u``), the PRNG key and the step,
plus the grain iterator state, and a small JSON *fingerprint* of the config fields the arrays
depend on (:func:`config_fingerprint`).

* **Async, keep last K.** ``save`` copies the arrays to host memory and returns; the files are
  written in the background (``wait``/``close`` block until they are). The newest
  ``max_to_keep`` checkpoints are kept.
* **Atomic.** Orbax writes each step into ``<step>.orbax-checkpoint-tmp-<time>`` and renames it
  to ``<step>`` only when every item is complete (on GCS, where renames are not atomic, it writes
  a commit marker instead). ``latest_step`` and ``restore`` only see finished steps, so a save
  cut short by preemption or a crash is never restored.
* **Any device count.** Restoring takes an abstract target whose leaves carry the *current*
  shardings, so a run saved on 8 devices restores onto 4. The per-sample arrays are padded to a
  multiple of the device count (``sharding.padded_size``); when that padding differs, the saved
  arrays are cut or padded to the new length, given the dataset size (``num_samples=``, or the
  fingerprint's ``num_samples``). Only rows past the dataset size change, and those are never
  read.
* **Any process count** (``position_is_global=True``). grain saves one iterator position per
  process. The image pipeline (:mod:`glofnd_jax.data.pipeline`) gives every process the same
  position, the number of steps taken, whatever the process count; so when the process count
  changed since the save, every process takes that common position (a clear error if the saved
  positions differ).
* **Compatible configs only.** Restoring compares the saved fingerprint with the current one and
  raises :class:`IncompatibleCheckpointError` naming every field that differs. The ``seed`` is
  part of it (it orders the data): a resume with another seed is refused unless the run allows
  it (``config.allow_seed_change``, passed as ``may_change=("seed",)``), which prints what
  changes.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Sequence

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

STATE, DATA, FINGERPRINT = "state", "data", "fingerprint"
# Model fields that change no saved array: compute dtype (parameters are stored as created).
_MODEL_FIELDS_FREE_TO_CHANGE = ("dtype",)
# Fingerprint fields added after checkpoints without them were written: a checkpoint lacking
# one is not refused for it (it was written by an older version, not with another value).
_ADDED_LATER = ("seed",)
# What a resume with another value of a field that ``may_change`` allows means, for the log.
_CHANGE_EFFECTS = {
    "seed": "from the resumed step the data order (the shuffle of every later epoch) and the "
            "evaluation's random splits follow the new seed; parameters, per-sample state and "
            "the PRNG key of augmentations and dropout come from the checkpoint, so the run "
            "matches neither seed's uninterrupted run",
}


class IncompatibleCheckpointError(ValueError):
  """The checkpoint was written by a run whose config differs in a field its arrays depend on."""


def config_fingerprint(config: ml_collections.ConfigDict, num_samples: int) -> dict:
  """The config fields a checkpoint's arrays and data position depend on, as plain JSON.

  ``task``, the ``seed`` (the data order), the dataset (name and size N: the per-sample arrays
  have N rows), the global batch (the step -> epoch and data-iterator mapping), the whole model
  config but its compute dtype, the loss kind (the string fields of ``config.loss``, e.g.
  ``name`` or ``version``: numbers such as the temperature may be changed on resume), the
  detection mode and every alpha (one per-sample state each). Missing fields are skipped, so
  every task's config works.
  """
  fingerprint: dict[str, Any] = {"task": config.get("task", "unimodal"),
                                 "num_samples": int(num_samples)}
  if "seed" in config:
    fingerprint["seed"] = int(config.seed)
  if "batch_size" in config:
    fingerprint["batch_size"] = int(config.batch_size)
  if "data" in config and "name" in config.data:
    fingerprint["data.name"] = config.data.name
  if "model" in config:
    for key, value in config.model.to_dict().items():
      if key not in _MODEL_FIELDS_FREE_TO_CHANGE:
        fingerprint[f"model.{key}"] = value
  if "loss" in config:
    for key, value in config.loss.to_dict().items():
      if isinstance(value, str):
        fingerprint[f"loss.{key}"] = value
  if "glofnd" in config:
    fingerprint["glofnd.mode"] = config.glofnd.mode
    alphas = tuple(config.glofnd.get("alphas", ())) or (config.glofnd.alpha,)
    fingerprint["glofnd.alphas"] = [float(a) for a in alphas]
  # A JSON round trip turns tuples into lists, as they come back from a checkpoint.
  return json.loads(json.dumps(fingerprint))


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
  """``'field: checkpoint X, now Y'`` for every field whose value differs."""
  out = []
  for key in sorted(set(saved) | set(current)):
    if saved.get(key) != current.get(key):
      out.append(f"{key}: checkpoint {saved.get(key, '(absent)')!r}, now "
                 f"{current.get(key, '(absent)')!r}")
  return out


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for ``(train_state, data_iterator)`` pairs.

  Args:
    directory: where the step directories live (created if missing).
    max_to_keep: newest checkpoints kept.
    async_save: write in the background (``save`` returns once the arrays are on the host).
    fingerprint: :func:`config_fingerprint` of the run; saved with every checkpoint and checked
      by every restore (``None``: neither).
    position_is_global: the data iterator's saved position means the same on every process and
      for every process count (true of :func:`glofnd_jax.data.make_iterator`), so a run may
      resume with another number of processes.
    on_restore: optional ``f(state, step) -> state`` applied after a *training* resume (a
      restore with the data iterator), e.g. to reset the thresholds; ``glofnd-jax eval``
      restores without the iterator and gets the saved state unchanged.
    may_change: fingerprint fields whose change a restore accepts (e.g. ``("seed",)`` for
      ``config.allow_seed_change``), with one line saying what the change means.
    num_samples: the dataset size N, the rows of the per-sample arrays that are ever read.
      Needed to restore onto a device count with another padding N_pad (see above); default:
      ``fingerprint["num_samples"]``, else a length change is refused.
    workdir_messages: the directory is the ``checkpoints/`` of a ``glofnd-jax`` ``--workdir``
      (what the CLI's runs pass): error messages then point to the run's ``config.json`` and to
      another ``--workdir``; otherwise they speak of the config and the directory.
  """

  def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = True,
               fingerprint: dict | None = None, position_is_global: bool = False,
               on_restore: Callable[[Any, int], Any] | None = None,
               may_change: Sequence[str] = (), num_samples: int | None = None,
               workdir_messages: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self.fingerprint = fingerprint
    self.num_samples = num_samples if num_samples is not None else (
        (fingerprint or {}).get("num_samples"))
    # How error messages name the saved config and the way to start over.
    self._config_note = " (the run's config.json)" if workdir_messages else ""
    self._elsewhere = "another --workdir" if workdir_messages else "another checkpoint directory"
    self.may_change = tuple(may_change)
    self.position_is_global = position_is_global
    self.on_restore = on_restore
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    # Handlers named up front so metadata (saved shapes) can be read before anything is saved.
    handlers = {STATE: ocp.StandardCheckpointHandler(), DATA: grain.checkpoint.CheckpointHandler(),
                FINGERPRINT: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None (unfinished saves are not listed)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Start an (async) save of ``state``, the iterator position and the fingerprint at ``step``.

    The caller makes sure ``state`` is finite (the train loop checks before every save).

    Raises:
      OSError: the checkpoint directory cannot be written (naming it and the OS error), at once
        instead of after orbax's timeout; the previous checkpoints are untouched.
    """
    self._check_writable(step)
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    if self.fingerprint is not None:
      items[FINGERPRINT] = ocp.args.JsonSave(self.fingerprint)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _check_writable(self, step: int) -> None:
    """Create and remove a probe file in the directory (process 0): fails fast and clearly."""
    if jax.process_index() != 0:
      return
    probe = self.directory / f".write_probe_{step}"
    try:
      probe.write_bytes(b"")
      probe.unlink()
    except OSError as error:
      raise OSError(error.errno, f"cannot save checkpoint step {step}: {self.directory} is not "
                    f"writable ({error.strerror or error}); the previous checkpoints are kept. "
                    "Free space or fix the permissions, then run the same command again to "
                    "resume.") from error

  def saved_fingerprint(self, step: int) -> dict | None:
    """The fingerprint stored with ``step`` (``None`` for checkpoints written without one)."""
    if not (self.directory / str(step) / FINGERPRINT).exists():
      return None
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{FINGERPRINT: ocp.args.JsonRestore()}))
    return restored[FINGERPRINT]

  def check_compatible(self, step: int) -> None:
    """Raise :class:`IncompatibleCheckpointError` if ``step`` was saved by another config."""
    if self.fingerprint is None:
      return
    saved = self.saved_fingerprint(step)
    if saved is None:
      return  # written before fingerprints existed: the shape checks below still apply
    current = {k: v for k, v in self.fingerprint.items() if k in saved or k not in _ADDED_LATER}
    for key in self.may_change:
      if key in saved and saved[key] != current.get(key):
        effect = _CHANGE_EFFECTS.get(key, "the resumed run continues with the new value")
        print(f"resuming checkpoint step {step} with {key}={current.get(key)!r} (it was written "
              f"with {saved[key]!r}), as allowed: {effect}.", flush=True)
        current[key] = saved[key]
    differences = fingerprint_differences(saved, current)
    if not differences:
      return
    seed_hint = (" (a changed seed may be allowed with config.allow_seed_change=True)"
                 if any(d.startswith("seed:") for d in differences) else "")
    detail = ""
    if saved.get("num_samples") != self.fingerprint.get("num_samples"):
      detail = (f" The dataset now has {self.fingerprint.get('num_samples')} samples but the "
                f"checkpoint's per-sample arrays (lambda, its moments, u) were made for "
                f"{saved.get('num_samples')}: the dataset changed, so they would address the "
                "wrong samples.")
    raise IncompatibleCheckpointError(
        f"checkpoint step {step} in {self.directory} was written with a different config: "
        f"{'; '.join(differences)}.{detail} Resume with the config it was written with"
        f"{self._config_note}{seed_hint}, or start a new run in {self._elsewhere}.")

  def restore(self, state_target, data_iterator=None, step: int | None = None):
    """Restore onto ``state_target`` (a state or its ``jax.ShapeDtypeStruct`` tree with
    shardings); the iterator, when given, is moved to the saved position in place.

    Returns:
      ``(state, step)``.

    Raises:
      FileNotFoundError: no complete checkpoint.
      IncompatibleCheckpointError: the fingerprint or an array shape does not match.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    self.check_compatible(step)
    abstract = jax.tree.map(_abstract, state_target)
    padded = self._check_shapes(step, abstract)
    # strict=False lets orbax cut or pad arrays whose length differs; _check_shapes allowed this
    # only for per-sample arrays, and only past the dataset size.
    items = {STATE: ocp.args.StandardRestore(abstract, strict=not padded)}
    if data_iterator is not None and not (
        self.position_is_global
        and self._restore_iterator_across_process_counts(step, data_iterator)):
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = restored[STATE]
    if data_iterator is not None and self.on_restore is not None:
      state = self.on_restore(state, step)
    return state, step

  def restore_newest_complete(self, state_target, data_iterator=None):
    """:meth:`restore` of the newest checkpoint that restores completely.

    Each newer one that does not (a truncated or missing array file, garbage metadata, data
    position or fingerprint, an empty step folder) is named with the reason in one line and
    moved aside to ``<directory>/corrupt/<step>-<n>`` (never deleted). A config mismatch
    (:class:`IncompatibleCheckpointError`) is not corruption and still refuses.

    Raises:
      FileNotFoundError: no checkpoint restores (the message says what to do).
    """
    moved = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(state_target, data_iterator, step)
      except IncompatibleCheckpointError:
        raise
      except Exception as error:  # noqa: BLE001 - any failure to read a step means it is damaged
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        moved.append(self._move_aside(step, reason))
    raise FileNotFoundError(
        f"no checkpoint in {self.directory} restores (moved aside: {', '.join(moved)}). Running "
        "the same command again starts this run over from step 0; to keep the work done, copy "
        f"the run's checkpoints back from a backup, or start in {self._elsewhere}.")

  def _move_aside(self, step: int, reason: str) -> str:
    """Move step ``step``'s folder to ``corrupt/<step>-<n>`` (process 0) and say why."""
    corrupt = self.directory / "corrupt"
    n = 0
    while (corrupt / f"{step}-{n}").exists():
      n += 1
    target = corrupt / f"{step}-{n}"
    if jax.process_index() == 0:
      corrupt.mkdir(parents=True, exist_ok=True)
      os.replace(self.directory / str(step), target)
    print(f"checkpoint step {step} in {self.directory} does not restore ({reason}); moved to "
          f"{target}, trying the next older one.", flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint_moved_aside_{step}_{n}")
    self._manager.reload()
    return str(target)

  def _restore_iterator_across_process_counts(self, step: int, data_iterator) -> bool:
    """Set the iterator from a save by another number of processes; False if not needed.

    grain's handler writes ``process_<i>-of-<n>.json`` per process and looks for this
    process's file on restore, which does not exist when the process count changed.
    """
    data_dir = self.directory / str(step) / DATA
    # Not grain's API but its file layout (grain 0.2): when it differs, grain restores as usual.
    own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    saved_files = sorted(data_dir.glob("process_*-of-*.json")) if data_dir.is_dir() else []
    if own.exists() or not saved_files:
      return False
    positions = [json.loads(path.read_text()) for path in saved_files]
    if any(position != positions[0] for position in positions):
      raise IncompatibleCheckpointError(
          f"checkpoint step {step} in {self.directory} was saved by {len(saved_files)} "
          f"processes at different data positions, and this run has {jax.process_count()}: "
          f"resume with {len(saved_files)} processes.")
    data_iterator.set_state(positions[0])
    return True

  def _check_shapes(self, step: int, abstract) -> bool:
    """Compare saved and target shapes leaf by leaf; True if some per-sample padding differs.

    A leaf may differ only in its leading dimension, with both lengths at least the dataset size
    (from the fingerprint): the padding to the device count. Anything else is a config mismatch.
    """
    metadata = self._manager.item_metadata(step)
    tree = getattr(metadata[STATE], "tree", None) if metadata is not None else None
    if tree is None:
      return False
    saved = ocp.tree.to_flat_dict(tree)
    target = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract, keep_empty_nodes=True))
    num_samples = self.num_samples
    # Fields one side has and the other lacks: a config with another optimiser or detection
    # mode, or a checkpoint written by an older version of the train state.
    name = lambda key: "/".join(map(str, key))
    is_array = lambda leaf: hasattr(leaf, "shape")
    missing = sorted(name(k) for k, leaf in target.items() if k not in saved and is_array(leaf))
    extra = sorted(name(k) for k, leaf in saved.items() if k not in target and is_array(leaf))
    if missing or extra:
      listing = lambda keys: ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)"
                                                    if len(keys) > 5 else "")
      parts = ([f"this run needs {listing(missing)}, which the checkpoint lacks"]
               if missing else []) + ([f"the checkpoint holds {listing(extra)}, which this run "
                                       "does not build"] if extra else [])
      raise IncompatibleCheckpointError(
          f"checkpoint step {step} in {self.directory} has another train-state structure: "
          f"{'; '.join(parts)}. It was written with another config (optimiser, detection mode, "
          "loss) or by another glofnd-jax version; resume with the config and version it was "
          f"written with{self._config_note}, or start a new run in {self._elsewhere}.")
    padded, problems, unknown_size = False, [], False
    for key, leaf in target.items():
      if key not in saved or not hasattr(leaf, "shape"):
        continue
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        continue  # saved as its key data: (2,) for a () key
      old, new = tuple(saved[key].shape), tuple(leaf.shape)
      if old == new:
        continue
      if (num_samples is not None and len(old) == len(new) >= 1 and old[1:] == new[1:]
          and min(old[0], new[0]) >= num_samples):
        padded = True
        continue
      problems.append(f"{'/'.join(map(str, key))}: checkpoint {old}, now {new}")
      if num_samples is None and len(old) == len(new) >= 1 and old[1:] == new[1:]:
        unknown_size = True
    if problems:
      padding_hint = (" If only the device count changed, pass the dataset size as "
                      "Checkpointer(num_samples=N) so the per-sample padding may differ."
                      if unknown_size else "")
      raise IncompatibleCheckpointError(
          f"checkpoint step {step} in {self.directory} holds arrays of other shapes than this "
          f"run builds: {'; '.join(problems[:5])}. The model or dataset config differs from the "
          f"one it was written with; resume with that config{self._config_note} or start a new "
          f"run in {self._elsewhere}.{padding_hint}")
    return padded

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
