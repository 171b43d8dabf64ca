"""Checks before the first step: a run never fails after training for a reason knowable before.

Each task's ``preflight`` (:meth:`glofnd_jax.training.task.Task.preflight`) calls these with
what it built: the detection schedule against ``epochs``, every split the evaluation will read
(present and non-empty), the images against ``data.image_size``/``data.channels`` (a resize or
channel conversion is announced in one line, never silent), and the labels the evaluation needs
(kNN and linear probes need at least 2 classes, and every class of the evaluated splits must have
a labelled training example). A refusal is a :class:`~glofnd_jax.errors.DataError` or
:class:`~glofnd_jax.errors.ConfigError` naming the field and the fix; the CLI prints it as one
line, before anything is trained.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from glofnd_jax import errors

# Reading every label of a split costs a pass over its records: done up to this size when the
# dataset does not store its class counts (convert-folder writes them into metadata.json).
MAX_LABEL_SCAN = 20_000
PROBE_RECORDS = 16  # with data.on_bad_sample="skip": records tried for the image shape

_EVAL_HINT = ("or pass --no-evaluate to train without the evaluation")


def detection_schedule(glofnd, epochs: int) -> str:
  """One phrase for the header line: when thresholds are learned and used."""
  if glofnd.mode == "none":
    return "detection off"
  return (f"detection {glofnd.mode}: lambda updates from epoch {glofnd.start_update_epoch}, "
          f"false negatives treated ({glofnd.treatment}) from epoch {glofnd.start_mask_epoch} of {epochs}")


def check_schedule(glofnd, epochs: int) -> list[str]:
  """Refuse a detection schedule that starts at or after the last epoch (warnings if allowed).

  ``glofnd.allow_late_start=True`` turns the refusal into a printed warning: the run then trains
  (part of) its epochs without false-negative detection, on purpose.
  """
  if glofnd.mode in ("none", "oracle"):
    return []
  problems = []
  for field in ("start_update_epoch", "start_mask_epoch"):
    start = glofnd[field]
    if start >= epochs:
      problems.append(
          f"config.glofnd.{field}={start} is not before config.epochs={epochs}: GloFND "
          f"({glofnd.mode}) would never {'learn a threshold' if 'update' in field else 'act'} "
          "in this run. Lower it below epochs, or set --config.glofnd.allow_late_start=true "
          "to train so on purpose.")
  if problems and not glofnd.get("allow_late_start", False):
    raise errors.ConfigError(problems[0])
  return [f"warning: {p.split(' Lower it')[0]} (allowed by glofnd.allow_late_start)."
          for p in problems]


def open_nonempty(open_split: Callable[[str], object], field: str, split: str, why: str):
  """``open_split(split)``, refused with the field and the fix when missing or empty."""
  try:
    source = open_split(split)
  except (FileNotFoundError, ValueError) as error:
    raise errors.DataError(
        f"config.{field}={split!r}: {errors.one_line(error)} {why} reads it. Make the split "
        "(`glofnd-jax convert-folder SRC OUT --val-fraction 0.1 --test-fraction 0.1`), name "
        f"another one with --config.{field}=NAME, {_EVAL_HINT}.") from error
  if len(source) == 0:
    raise errors.DataError(f"config.{field}={split!r} is empty (0 records); {why} reads it: "
                           f"give it records, name another split, {_EVAL_HINT}.")
  return source


def image_note(source, image_size: int, channels: int, split: str,
               skip_bad: bool = False) -> str | None:
  """The line announcing a resize or channel change of ``split``'s images (None if none).

  Read from the dataset's declared shape, else from its first record (encoded files may differ
  in size: every one is resized to the configured size in the input pipeline); with
  ``skip_bad`` (``data.on_bad_sample='skip'``) from the first of the first few that decodes.
  """
  shape = getattr(source, "image_shape", None)
  varied = shape is None
  if shape is None:
    from glofnd_jax.data.decode import decode_image
    tries = min(len(source), PROBE_RECORDS if skip_bad else 1)
    for position in range(tries):
      try:
        shape = decode_image(source[position]["image"]).shape
        break
      except Exception as error:  # pylint: disable=broad-except  # named, with the fix
        if position + 1 == tries:
          first = "record 0" if tries == 1 else f"none of records 0-{tries - 1}"
          raise errors.DataError(
              f"{first} of split {split!r} does not decode ({errors.one_line(error)}): rewrite "
              "the dataset with `glofnd-jax convert-folder` (it verifies every image)"
              + ("" if skip_bad else ", or set --config.data.on_bad_sample=skip to train on "
                 "with stand-ins for records that do not decode") + ".") from error
  height, width, data_channels = (tuple(shape) + (1,))[:3]
  changes = []
  if (height, width) != (image_size, image_size):
    changes.append(f"resized from {height}x{width}{' (first record)' if varied else ''} to "
                   f"{image_size}x{image_size} (config.data.image_size)")
  if data_channels != channels:
    changes.append(f"converted from {data_channels} to {channels} channel(s) "
                   "(config.data.channels)")
  if not changes:
    return None
  return f"data: {split} images are " + " and ".join(changes) + "."


def label_counts(source, split: str) -> np.ndarray | None:
  """Records per class of ``source`` (None when they cannot be had without a long scan)."""
  info = getattr(source, "info", None)
  stored = getattr(info, "extra", {}).get("class_counts", {}).get(split) if info else None
  if stored is not None:
    return np.asarray(stored, np.int64)
  if len(source) > MAX_LABEL_SCAN:
    return None
  labels = np.asarray([source[i]["label"] for i in range(len(source))], np.int64)
  return np.bincount(labels, minlength=int(getattr(source, "num_classes", 0) or 0))


def check_labels(train_counts: np.ndarray | None, eval_counts: dict[str, np.ndarray | None],
                 class_names, *, hold_out_val: bool) -> None:
  """Refuse labels the kNN and linear-probe evaluation cannot use (see the module docstring).

  Args:
    train_counts: records per class of the train split (None: unknown, not checked).
    eval_counts: split field -> records per class of each evaluated split.
    class_names: names in label order (for the message).
    hold_out_val: the validation set is held out of train (``data.val_split = ""``).
  """
  if train_counts is None:
    return
  name = lambda c: repr(class_names[c]) if c < len(class_names) else str(c)  # noqa: E731
  present = np.flatnonzero(train_counts)
  if len(present) < 2:
    only = f" (only class {name(present[0])})" if len(present) else ""
    raise errors.DataError(
        f"the train split has {len(present)} class(es){only}: the evaluation's kNN and linear "
        "probes need at least 2. Add images of other classes (one subfolder per class), "
        f"{_EVAL_HINT}.")
  for field, counts in eval_counts.items():
    if counts is None:
      continue
    unseen = [c for c in np.flatnonzero(counts) if c >= len(train_counts) or not train_counts[c]]
    if unseen:
      raise errors.DataError(
          f"config.{field} holds class(es) {', '.join(name(c) for c in unseen[:5])} that the "
          "train split has no labelled example of: the linear probes cannot predict them. Give "
          "every class training images (convert-folder's --val-fraction/--test-fraction split "
          f"each class), {_EVAL_HINT}.")
  if hold_out_val and (train_counts[present] < 2).all():
    raise errors.DataError(
        "config.data.val_split='' holds the validation set out of train, but every class has "
        "one training example, so none is left to validate on: give classes at least 2 images "
        f"or name a validation split with --config.data.val_split=NAME, {_EVAL_HINT}.")

