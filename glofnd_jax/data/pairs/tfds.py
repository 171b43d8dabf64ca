"""A prepared TFDS image-text dataset as a pair source (key = record position)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np


class TfdsPairSource:
  """A prepared TFDS image-text dataset (ArrayRecord, read without TensorFlow).

  The key of a record is its position in the split: stable only when the dataset was prepared
  with ``disable_shuffling=True`` or is never re-prepared. A caption feature holding several
  captions (e.g. COCO) contributes its first one.
  """

  def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, *,
               image_key: str = "image", caption_key: str = "caption", label_key: str = ""):
    from glofnd_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

    # TfdsSource needs some label feature to open; without labels the image feature stands in
    # and is never read as a label.
    self._inner = tfds_source.TfdsSource(name, split, data_dir, image_key=image_key,
                                         label_key=label_key or image_key)
    self.name, self.split = name, split
    self._data, self._image_key = self._inner._data, image_key  # pylint: disable=protected-access
    self._caption_key, self._label_key = caption_key, label_key
    example = self._data[0] if len(self._data) else {}
    if caption_key not in example:
      raise ValueError(f"TFDS dataset {name!r} has no feature {caption_key!r}; it has "
                       f"{sorted(example)}. Set data.caption_field.")
    self.keys = np.arange(len(self._data), dtype=np.int64)
    self.labels = (np.asarray(self._inner.labels(), np.int64) if label_key
                   else np.full(len(self._data), -1, np.int64))
    self.class_names = self._inner.class_names if label_key else None
    self.problems = []
    self.data_size = len(self._data)
    self.has_labels = bool(label_key) and bool((self.labels >= 0).all())

  def __len__(self) -> int:
    return len(self.keys)

  def read_caption(self, position: int) -> str:
    caption = self._data[int(position)][self._caption_key]
    if isinstance(caption, (list, tuple, np.ndarray)) and not isinstance(caption, (bytes, str)):
      caption = caption[0] if len(caption) else ""
    if isinstance(caption, (bytes, np.bytes_)):
      caption = bytes(caption).decode("utf-8", errors="replace")
    return str(caption).strip()

  def read_image(self, position: int):
    return self._data[int(position)][self._image_key]

  def __getitem__(self, position: int) -> dict[str, Any]:
    position = int(position)
    return {"image": self.read_image(position), "caption": self.read_caption(position),
            "label": int(self.labels[position]), "key": position}

  def describe(self, position: int) -> str:
    return f"TFDS {self.name}/{self.split} key {int(position)}"

  def fingerprint(self) -> str:
    return hashlib.sha1(json.dumps([self.name, self.split, len(self)]).encode()).hexdigest()
