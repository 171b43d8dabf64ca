"""Image records that do not decode at train or evaluation time: fatal, or skipped.

``convert-folder`` verifies every image, but a record store written by other tools (or a file
damaged later) can still hold one that Pillow cannot read. What happens then is
``config.data.on_bad_sample``, the key image-text runs use for their bad samples:

* ``'fail'`` (the unimodal default): the first such record stops the run with one line naming
  its index, its source file and this key.
* ``'skip'``: the record is skipped for good: a stand-in image takes its place in every batch
  (training and the evaluation's feature passes), its index is logged once with its source file,
  and ``results.json`` lists it (``meta.train_bad_samples`` / ``meta.eval_bad_samples``).

Why a stand-in rather than dropping the record: batches have a fixed shape and a step's batch is
a function of the step alone (what makes a resume exact), so a record cannot leave its batch
mid-run. The stand-in is noise seeded by the record's index: the same on every read (a resumed
run sees the same batches), and different for every index, so two skipped records are never
duplicates of each other (GloFND would rightly flag identical images as false negatives).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from glofnd_jax import errors

POLICIES = ("fail", "skip")
KEY = "data.on_bad_sample"
FLAG = "substituted"  # batch field: True where a stand-in replaced a record


def stand_in_image(index: int, shape: tuple[int, ...]) -> np.ndarray:
  """The uint8 noise image of ``shape`` that replaces record ``index`` (same every call).

  With a leading views axis (host crops: ``(views, h, w, C)``) every view is the same image, as
  the views of a real record are cut from one image; the on-device augmentation still differs.
  """
  rng = np.random.default_rng((0x5EED, max(int(index), 0)))
  image = rng.integers(0, 256, shape[-3:], dtype=np.uint8)
  return np.ascontiguousarray(np.broadcast_to(image, shape))


def reason(error: BaseException) -> str:
  """The error in one line, without the in-memory file object Pillow names (an address)."""
  return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "(the record's bytes)",
                errors.one_line(error))


def describe(record: dict[str, Any]) -> str:
  """``record 17 (from b/broken.png)``: how errors and logs name a record."""
  source = record.get("source")
  return f"record {int(record['index'])} ({f'from {source}' if source else 'no source file'})"


class GuardedDecode:
  """A per-example decode stage that applies the bad-record policy.

  Wraps a stage mapping a record to ``{'image', 'label', 'index'}`` and adds the
  :data:`FLAG` field. A record the stage cannot decode raises a one-line
  :class:`~glofnd_jax.errors.DataError` (``'fail'``) or gets :func:`stand_in_image` of
  ``shape`` with its own label and index and the flag set (``'skip'``).
  """

  def __init__(self, decode: Callable[[dict[str, Any]], dict[str, Any]], policy: str = "fail",
               shape: tuple[int, ...] | None = None):
    if policy not in POLICIES:
      raise errors.ConfigError(f"config.{KEY}={policy!r} is invalid: use 'fail' or 'skip'.")
    if policy == "skip" and shape is None:
      raise ValueError(f"{KEY}='skip' needs the decoded image shape (the stand-in's): give the "
                       "pipeline image_size and channels.")
    self.decode, self.policy = decode, policy
    self.shape = None if shape is None else tuple(int(s) for s in shape)

  def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
    try:
      out = self.decode(record)
    except Exception as error:  # pylint: disable=broad-except  # Pillow raises many kinds
      if self.policy == "fail":
        raise errors.DataError(
            f"{describe(record)} does not decode: {reason(error)}. Set "
            f"--config.{KEY}=skip to train on with a stand-in for it (listed in results.json), "
            "or convert the data again with `glofnd-jax convert-folder` (it verifies every "
            "image and skips or names bad files).") from error
      index = int(record["index"])
      return {"image": stand_in_image(index, self.shape), "label": np.int32(record["label"]),
              "index": np.int32(index), FLAG: np.bool_(True)}
    return {**out, FLAG: np.bool_(False)}


def why_not(decode: Callable[[dict[str, Any]], Any], record: dict[str, Any]) -> str:
  """The one-line reason ``decode(record)`` fails ('' if it does not)."""
  try:
    decode(record)
  except Exception as error:  # pylint: disable=broad-except
    return reason(error)
  return ""


class BadRecordLog:
  """The records of one split replaced by stand-ins, each logged once, for ``results.json``.

  ``note(batch)`` reads a batch's :data:`FLAG` rows; the source names each record's file and the
  decode stage re-run on it says why (only for the few bad records).
  """

  def __init__(self, source, split: str, decode: Callable[[dict[str, Any]], Any],
               verbose: bool = True):
    self.source, self.split, self.decode, self.verbose = source, split, decode, verbose
    self.records: dict[int, dict[str, Any]] = {}

  def note(self, batch: dict[str, Any]) -> None:
    flags = np.asarray(batch.get(FLAG, ()), bool)
    if not flags.any():
      return
    indices = np.asarray(batch["index"])
    for index in indices[flags & (indices >= 0)].tolist():  # not evaluation's padding rows
      if index in self.records:
        continue
      record = {**self.source[index], "index": index}
      entry = {"split": self.split, "index": int(index), "source": record.get("source"),
               "error": why_not(self.decode, record)}
      self.records[index] = entry
      if self.verbose:  # above a progress bar, if one is drawn
        tqdm.write(f"{KEY}='skip': {describe(record)} of split {self.split!r} does not decode "
              f"({entry['error']}); a stand-in image takes its place.")

  def section(self) -> dict[str, Any]:
    """``{"bad_images": count, "records": [...]}`` (sorted by index), the results.json form."""
    return {"bad_images": len(self.records),
            "records": [self.records[i] for i in sorted(self.records)]}


def merged_section(logs) -> dict[str, Any]:
  """One results.json section of several :class:`BadRecordLog` (e.g. the evaluated splits)."""
  records = [entry for log in logs for entry in log.section()["records"]]
  return {"bad_images": len(records), "records": records}
