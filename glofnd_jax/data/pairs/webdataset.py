"""The webdataset reader: image-caption tar shards served by random access.

:class:`WebDatasetPairSource` indexes every shard once (member offsets and sizes, keys and
labels: :func:`~glofnd_jax.data.pairs.shards.index_shards`, cached in ``index_dir``) and then
serves ``source[i]`` by reading the two members with ``os.pread``: random access, so the grain
pipeline of :mod:`glofnd_jax.data.pairs.pipeline` shuffles it, splits it across processes (each
process reads only its own rows of every global batch) and checkpoints its position exactly like
any other source. Keys follow the index contract of :mod:`glofnd_jax.data.pairs.contract`:
samples lacking one are refused with a pointer to ``glofnd-jax rekey-shards``
(:mod:`glofnd_jax.data.pairs.shard_tools`). Compressed shards (``.tar.gz``) cannot be read by
offset and are rejected with a clear error. A damaged shard (cut short, unreadable, or not
matching its manifest: :mod:`glofnd_jax.data.pairs.integrity`) is an error naming it, the byte
offset and the last good key, unless ``on_damaged_shard='skip'``, which keeps its intact samples
and lists it in ``damaged``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any, Sequence

import numpy as np

from glofnd_jax.data.pairs.contract import check_keys
from glofnd_jax.data.pairs.integrity import DAMAGED_SHARD_POLICIES, check_counts_record
from glofnd_jax.data.pairs.shards import MISSING, damage_line, expand_shards, index_shards


class WebDatasetPairSource:
  """Random-access image-caption source over webdataset shards (see the module docstring).

  ``source[i]`` is ``{'image': encoded bytes, 'caption': str, 'label': int, 'key': int}`` for the
  ``i``-th sample in shard order (position ``i`` is *not* the key: ``keys[i]`` is).

  Attributes:
    shards: the shard paths.
    keys: ``(M,)`` int64 key of every position; unique.
    labels: ``(M,)`` int64 labels (-1 when a sample has none).
    data_size: ``max key + 1``: the length of the per-sample state arrays.
    has_labels: every sample has a label >= 0.
    problems: ``[(shard, sample name, reason)]`` of samples left out because their structure is
      unusable (counted as bad samples; see :mod:`glofnd_jax.data.pairs.screening` for the policy).
    damaged: one line per damaged shard whose intact samples are used (``on_damaged_shard=
      'skip'``): the shard, the byte offset, the reason, the last good sample and key.
  """

  def __init__(self, shards: str | Sequence[str], *, key_field: str = "key",
               caption_field: str = "caption", label_field: str = "label",
               index_dir: str | os.PathLike | None = None, workers: int = 4,
               on_damaged_shard: str = "fail"):
    if on_damaged_shard not in DAMAGED_SHARD_POLICIES:
      raise ValueError(f"data.on_damaged_shard={on_damaged_shard!r} is invalid: use "
                       f"{' or '.join(map(repr, DAMAGED_SHARD_POLICIES))}.")
    self.shards = expand_shards(shards)
    self.key_field, self.caption_field = key_field, caption_field
    indexes = index_shards(self.shards, key_field=key_field, caption_field=caption_field,
                           label_field=label_field, index_dir=index_dir, workers=workers)
    lost = {} if index_dir is None else check_counts_record(
        index_dir, self.shards, [len(index) for index in indexes])
    self.damaged = [index.damage or damage_line(index.shard, None, lost[index.shard],
                                                index.names, index.keys)
                    for index in indexes if index.damage or index.shard in lost]
    if self.damaged and on_damaged_shard == "fail":
      raise ValueError(
          f"{len(self.damaged)} of {len(self.shards)} shard(s) are damaged, e.g. "
          f"{self.damaged[0]}. Copy the shard(s) again from their source (`glofnd-jax "
          "validate-shards` lists them all), or set data.on_damaged_shard='skip' to use only "
          "their intact samples.")
    self.problems = []
    parts = []
    for shard_id, index in enumerate(indexes):
      unusable = {name for name, _ in index.problems}
      self.problems.extend((index.shard, name, reason) for name, reason in index.problems)
      usable = np.array([name not in unusable for name in index.names.tolist()], bool)
      missing_key = usable & (index.keys == MISSING)
      if missing_key.any():
        names = index.names[missing_key].tolist()
        raise ValueError(
            f"{int(missing_key.sum())} sample(s) of shard {index.shard} have no integer json field "
            f"{key_field!r} (first: {names[0]!r}). Every sample needs its global index: write "
            f"keyed copies with `glofnd-jax rekey-shards`, or set data.key_field.")
      parts.append((shard_id, index, usable))
    self._shard_id = np.concatenate([np.full(int(u.sum()), s, np.int32) for s, _, u in parts])
    take = lambda field: np.concatenate([getattr(i, field)[u] for _, i, u in parts])
    self.keys = take("keys")
    self.labels = take("labels")
    self._names = take("names")
    self._image = np.stack([take("image_offset"), take("image_size")], axis=1)
    self._text = np.stack([take("text_offset"), take("text_size")], axis=1)
    self._text_is_json = take("text_is_json")
    if len(self.keys) == 0:
      raise ValueError(f"no usable sample in {len(self.shards)} shard(s) "
                       f"({len(self.problems)} unusable, e.g. {self.problems[:1]}).")
    check_keys(self.keys, lambda i: (self.shards[self._shard_id[i]], str(self._names[i])))
    self.data_size = int(self.keys.max()) + 1
    self.has_labels = bool((self.labels >= 0).all())
    self._files: dict[int, int] = {}
    self._lock = threading.Lock()

  # grain may copy sources into worker processes: file descriptors do not travel.
  def __getstate__(self):
    state = dict(self.__dict__)
    state["_files"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.keys)

  def _fd(self, shard_id: int) -> int:
    fd = self._files.get(shard_id)
    if fd is None:
      with self._lock:
        fd = self._files.get(shard_id)
        if fd is None:
          fd = os.open(self.shards[shard_id], os.O_RDONLY)
          self._files[shard_id] = fd
    return fd

  def _read(self, position: int, offset_size: np.ndarray) -> bytes:
    offset, size = (int(v) for v in offset_size)
    data = os.pread(self._fd(int(self._shard_id[position])), size, offset)
    if len(data) != size:
      raise OSError(f"short read from {self.describe(position)}: the shard changed after it was "
                    "indexed; delete the index cache (data.index_dir) and retry.")
    return data

  def read_caption(self, position: int) -> str:
    """The caption of ``position`` (stripped; may be empty)."""
    data = self._read(position, self._text[position])
    if self._text_is_json[position]:
      caption = json.loads(data).get(self.caption_field, "")
      return caption.strip() if isinstance(caption, str) else ""
    return data.decode("utf-8", errors="replace").strip()

  def read_image(self, position: int) -> bytes:
    """The encoded image file of ``position``."""
    return self._read(position, self._image[position])

  def __getitem__(self, position: int) -> dict[str, Any]:
    position = int(position)
    return {"image": self.read_image(position), "caption": self.read_caption(position),
            "label": int(self.labels[position]), "key": int(self.keys[position])}

  def describe(self, position: int) -> str:
    """``"shard PATH key K (sample NAME)"``: where a sample lives, for error messages."""
    return (f"shard {self.shards[self._shard_id[position]]} key {int(self.keys[position])} "
            f"(sample {str(self._names[position])!r})")

  def fingerprint(self) -> str:
    """Identifies the shard set's contents (paths, sizes, mtimes) for caches."""
    parts = [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in self.shards]
    identity = json.dumps([parts, self.key_field, self.caption_field])
    return hashlib.sha1(identity.encode()).hexdigest()

  def close(self) -> None:
    with self._lock:
      for fd in self._files.values():
        os.close(fd)
      self._files.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass  # interpreter shutdown

  def __repr__(self) -> str:
    return (f"WebDatasetPairSource({len(self.shards)} shards, {len(self)} samples, "
            f"data_size={self.data_size})")
