"""Our ArrayRecord image-caption format: :func:`write_pairs` and :class:`ArrayRecordPairSource`."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

import grain
import msgpack
import numpy as np

from glofnd_jax.data.pairs.contract import check_keys

PAIRS_FORMAT = "glofnd_jax.caption_arrayrecord"
PAIRS_VERSION = 1


def _split_files(data_dir, split: str) -> tuple[pathlib.Path, pathlib.Path]:
  base = pathlib.Path(data_dir)
  return base / f"{split}.array_record", base / f"{split}.keys.npz"


def write_pairs(data_dir: str | os.PathLike, split: str, examples, *,
                class_names: Sequence[str] | None = None) -> int:
  """Writes one split of our ArrayRecord image-caption format.

  Layout: ``DIR/<split>.array_record`` (one msgpack record ``{'image': bytes, 'caption': str,
  'label': int, 'key': int}`` per pair, plus ``'shape'`` when the image is a raw uint8 array),
  ``DIR/<split>.keys.npz`` (the keys and labels, so opening a split reads no image) and
  ``DIR/<split>.json`` (format, count, class names), written last.

  Args:
    data_dir: the dataset directory (created).
    split: split name.
    examples: iterable of ``(image, caption, key, label)``; image = encoded bytes or a uint8
      ``(H, W[, C])`` array; label -1 when unknown.
    class_names: optional names of the labels.

  Returns:
    The number of records.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  records_path, keys_path = _split_files(data_dir, split)
  records_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = records_path.with_name(records_path.name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
  keys, labels = [], []
  try:
    for image, caption, key, label in examples:
      record = {"caption": str(caption), "key": int(key), "label": int(label)}
      if isinstance(image, (bytes, bytearray)):
        record["image"] = bytes(image)
      else:
        array = np.asarray(image, np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
        record["image"], record["shape"] = np.ascontiguousarray(array).tobytes(), list(array.shape)
      writer.write(msgpack.packb(record))
      keys.append(int(key))
      labels.append(int(label))
  finally:
    writer.close()
  os.replace(tmp, records_path)
  np.savez(keys_path, keys=np.asarray(keys, np.int64), labels=np.asarray(labels, np.int64))
  meta = {"format": PAIRS_FORMAT, "version": PAIRS_VERSION, "num_records": len(keys),
          "class_names": list(class_names) if class_names else None}
  meta_path = pathlib.Path(data_dir) / f"{split}.json"
  meta_path.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=1))
  os.replace(meta_path.with_suffix(".json.tmp"), meta_path)
  return len(keys)


class ArrayRecordPairSource:
  """One split of our ArrayRecord image-caption format (see :func:`write_pairs`)."""

  def __init__(self, data_dir: str | os.PathLike, split: str):
    records_path, keys_path = _split_files(data_dir, split)
    meta_path = pathlib.Path(data_dir) / f"{split}.json"
    if not meta_path.is_file():
      raise FileNotFoundError(f"{meta_path} does not exist: {data_dir} holds no complete split "
                              f"{split!r} of image-caption records (write one with write_pairs).")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != PAIRS_FORMAT or meta.get("version") != PAIRS_VERSION:
      raise ValueError(f"{meta_path} is not {PAIRS_FORMAT} version {PAIRS_VERSION}.")
    self.path, self.split = str(records_path), split
    self._records = grain.sources.ArrayRecordDataSource(self.path)
    with np.load(keys_path) as data:
      self.keys, self.labels = data["keys"], data["labels"]
    if not len(self._records) == len(self.keys) == meta["num_records"]:
      raise ValueError(f"{records_path} holds {len(self._records)} records, {keys_path} "
                       f"{len(self.keys)} keys, {meta_path} says {meta['num_records']}: the "
                       "split is incomplete; rewrite it.")
    self.class_names = meta.get("class_names")
    self.problems = []
    check_keys(self.keys, lambda i: (self.path, f"record {i}"))
    self.data_size = int(self.keys.max()) + 1 if len(self.keys) else 0
    self.has_labels = bool(len(self.labels)) and bool((self.labels >= 0).all())

  def __len__(self) -> int:
    return len(self.keys)

  def _record(self, position: int) -> dict:
    return msgpack.unpackb(self._records[int(position)])

  def __getitem__(self, position: int) -> dict[str, Any]:
    record = self._record(position)
    image = record["image"]
    if "shape" in record:
      image = np.frombuffer(image, np.uint8).reshape(record["shape"])
    return {"image": image, "caption": record["caption"].strip(), "label": int(record["label"]),
            "key": int(record["key"])}

  def read_caption(self, position: int) -> str:
    return self._record(position)["caption"].strip()

  def read_image(self, position: int):
    return self[position]["image"]

  def describe(self, position: int) -> str:
    return f"file {self.path} key {int(self.keys[position])} (record {int(position)})"

  def fingerprint(self) -> str:
    stat = os.stat(self.path)
    return hashlib.sha1(json.dumps([os.path.abspath(self.path), stat.st_size,
                                    stat.st_mtime_ns]).encode()).hexdigest()
