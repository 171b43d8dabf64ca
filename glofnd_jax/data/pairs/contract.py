"""What every image-caption source promises: the pair-source protocol and the index contract.

**The key is the index.** A sample's key is its global dataset index: GloFND's thresholds and
FastCLIP's ``u`` live in ``(data_size,)`` arrays addressed by it, with ``data_size = max key + 1``.
Keys must be unique non-negative integers up to :data:`MAX_KEY`. Keys missing from a source
(downloads that failed, samples screened out) are *holes*: their rows exist and are never read or
written. Batches carry the key as ``index_img`` and ``index_txt`` (equal: one key per pair), never
the sample's position in the source, which differs as soon as keys have holes.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

MAX_KEY = 2**31 - 2  # keys index int32 arrays of length max key + 1


class PairSource(Protocol):
  """A random-access image-caption source (positions ``0 .. len - 1``).

  ``source[i]`` is ``{'image': encoded bytes or uint8 array, 'caption': str, 'label': int,
  'key': int}``.

  Attributes:
    keys: ``(M,)`` int64 key of every position; unique, in ``[0, MAX_KEY]``.
    labels: ``(M,)`` int64 class labels; -1 where unknown.
    data_size: ``max key + 1``: the length of the per-sample state arrays.
    has_labels: every sample has a label >= 0.
  """

  keys: np.ndarray
  labels: np.ndarray
  data_size: int
  has_labels: bool

  def __len__(self) -> int: ...

  def __getitem__(self, position: int) -> dict[str, Any]: ...

  def read_caption(self, position: int) -> str:
    """The caption alone (stripped; may be empty)."""

  def read_image(self, position: int) -> Any:
    """The image alone (encoded bytes or a uint8 array)."""

  def describe(self, position: int) -> str:
    """Where sample ``position`` lives (file or shard, key), for error messages."""

  def fingerprint(self) -> str:
    """Identifies the source's contents, for caches."""


class PairSubset:
  """Some positions of a pair source, as a source of their own (the keys are unchanged)."""

  def __init__(self, source, positions: np.ndarray):
    self.base = source
    self.positions = np.asarray(positions, np.int64)
    self.keys = source.keys[self.positions]
    self.labels = source.labels[self.positions]
    self.data_size = source.data_size  # removed samples become holes: the state keeps its size
    self.has_labels = bool(len(self.labels)) and bool((self.labels >= 0).all())
    self.class_names = getattr(source, "class_names", None)

  def __len__(self) -> int:
    return len(self.positions)

  def __getitem__(self, position: int):
    return self.base[int(self.positions[position])]

  def read_caption(self, position: int) -> str:
    return self.base.read_caption(int(self.positions[position]))

  def read_image(self, position: int):
    return self.base.read_image(int(self.positions[position]))

  def describe(self, position: int) -> str:
    return self.base.describe(int(self.positions[position]))

  def fingerprint(self) -> str:
    return self.base.fingerprint()


def describe_locations(locations: Sequence[tuple[str, str]], limit: int = 3) -> str:
  """``"A sample 'x', B sample 'y' and 2 more"``: the first ``limit`` of ``(file, name)``."""
  shown = ", ".join(f"{shard} sample {name!r}" for shard, name in locations[:limit])
  more = len(locations) - limit
  return shown + (f" and {more} more" if more > 0 else "")


def check_keys(keys: np.ndarray, locate) -> None:
  """Raises a clear error unless ``keys`` are unique integers in ``[0, MAX_KEY]``.

  Args:
    keys: ``(M,)`` int64 keys.
    locate: ``position -> (shard or file, sample name)`` for the messages.
  """
  bad = np.flatnonzero((keys < 0) | (keys > MAX_KEY))
  if len(bad):
    i = int(bad[0])
    shard, name = locate(i)
    raise ValueError(f"{len(bad)} key(s) are out of range [0, {MAX_KEY}], e.g. key {int(keys[i])} "
                     f"of {shard} sample {name!r}. Keys are global indices: rewrite them with "
                     "`glofnd-jax rekey-shards --all`.")
  order = np.argsort(keys, kind="stable")
  sorted_keys = keys[order]
  dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
  if len(dup):
    key = int(sorted_keys[dup[0]])
    where = [locate(int(i)) for i in order[sorted_keys == key]]
    num_keys = len(np.unique(sorted_keys[dup]))
    raise ValueError(f"{num_keys} key(s) occur more than once, e.g. key {key} in "
                     f"{describe_locations(where)}. Keys must be unique: rewrite them with "
                     "`glofnd-jax rekey-shards --all`.")
