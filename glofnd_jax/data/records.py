"""Our on-disk image format: one ArrayRecord file per split plus a ``metadata.json``.

Layout of a dataset directory::

    DIR/metadata.json             what ImageDatasetInfo holds (classes, shape, split sizes)
    DIR/<split>.array_record      one msgpack record per example

A record is a msgpack map ``{'image': bytes, 'label': int}`` plus ``'shape': [H, W, C]`` when the
bytes are a raw uint8 array (C order); without ``'shape'`` the bytes are an encoded image file
(PNG, JPEG, anything Pillow opens), decoded later in the input pipeline. ``'source'`` (optional)
is the file the record was converted from, named when the record fails to decode. Reading needs no
TensorFlow: :class:`ArrayRecordImageSource` wraps ``grain.sources.ArrayRecordDataSource``.

The metadata file is written last, so its presence (with a matching record count, see
:meth:`ArrayRecordImageSource.__init__`) means the dataset is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Iterable

import grain
import msgpack
import numpy as np
from array_record.python import array_record_module

FORMAT_NAME = "glofnd_jax.image_arrayrecord"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
# group_size:1 makes each record its own chunk: random access (a shuffled pipeline) then reads one
# record instead of decompressing a whole group of them.
_WRITER_OPTIONS = "group_size:1"


@dataclasses.dataclass
class ImageDatasetInfo:
  """Contents of ``metadata.json``.

  Attributes:
    num_classes: number of classes; labels lie in ``[0, num_classes)``.
    class_names: ``num_classes`` names, in label order.
    image_shape: ``[H, W, C]`` when every image has that shape (raw arrays), else None.
    encoding: ``'raw'`` (uint8 arrays), ``'encoded'`` (image files decoded in the pipeline) or
      ``'mixed'`` (splits stored differently). Informational: each record says how it is stored.
    splits: split name -> number of records.
    extra: free-form, JSON-serialisable provenance (e.g. the digits split membership).
  """

  num_classes: int
  class_names: list[str]
  image_shape: list[int] | None
  encoding: str
  splits: dict[str, int] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> "ImageDatasetInfo":
    if obj.get("format") != FORMAT_NAME:
      raise ValueError(f"not a {FORMAT_NAME} metadata file (format={obj.get('format')!r}).")
    if obj.get("version") != FORMAT_VERSION:
      raise ValueError(f"{FORMAT_NAME} version {obj.get('version')!r} is not supported "
                       f"(this code reads version {FORMAT_VERSION}).")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in fields})


def split_path(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
  """Path of one split's ArrayRecord file."""
  return pathlib.Path(data_dir) / f"{split}.array_record"


def encode_record(image: np.ndarray | bytes, label: int, source: str | None = None) -> bytes:
  """Serialises one example.

  Args:
    image: a uint8 array ``(H, W)`` or ``(H, W, C)`` (stored raw; ``(H, W)`` gets ``C = 1``), or
      the bytes of an encoded image file (stored as is).
    label: integer class label.
    source: the file it came from (kept to name it in errors), or None.
  """
  named = {} if source is None else {"source": str(source)}
  if isinstance(image, (bytes, bytearray)):
    return msgpack.packb({"image": bytes(image), "label": int(label), **named})
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"raw images must be uint8, got {image.dtype}.")
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3:
    raise ValueError(f"raw images must be (H, W) or (H, W, C), got shape {image.shape}.")
  return msgpack.packb({"image": np.ascontiguousarray(image).tobytes(), "label": int(label),
                        "shape": list(image.shape), **named})


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of :func:`encode_record`.

  Returns:
    ``{'image': uint8 (H, W, C) array (raw) or bytes (encoded file), 'label': int}``, and
    ``'source'`` when the record names its file.
  """
  obj = msgpack.unpackb(data)
  image = obj["image"]
  if "shape" in obj:
    image = np.frombuffer(image, np.uint8).reshape(obj["shape"])
  named = {"source": obj["source"]} if "source" in obj else {}
  return {"image": image, "label": int(obj["label"]), **named}


def write_split(data_dir: str | os.PathLike, split: str,
                examples: Iterable[tuple[np.ndarray | bytes, int]]) -> int:
  """Writes one split's ArrayRecord file (atomically: a temporary file renamed at the end).

  Args:
    data_dir: dataset directory (created if missing).
    split: split name, e.g. ``'train'``.
    examples: ``(image, label)`` pairs or ``(image, label, source file)`` triples; see
      :func:`encode_record`. Their order is the record order, i.e. each example's global index
      within the split.

  Returns:
    The number of records written.
  """
  path = split_path(data_dir, split)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
  count = 0
  try:
    try:
      for example in examples:
        writer.write(encode_record(*example))
        count += 1
    finally:
      writer.close()
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
    raise
  return count


def write_info(data_dir: str | os.PathLike, info: ImageDatasetInfo) -> None:
  """Writes ``metadata.json`` (atomically) into ``data_dir``."""
  path = pathlib.Path(data_dir) / METADATA_FILE
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(info.to_json(), indent=1))
  os.replace(tmp, path)


def is_complete(data_dir: str | os.PathLike, splits: Iterable[str],
                expected_extra: dict[str, Any]) -> bool:
  """Whether ``data_dir`` holds every split in full and its ``extra`` has these values."""
  try:
    info = read_info(data_dir)
    if any(info.extra.get(key) != value for key, value in expected_extra.items()):
      return False
    for split in splits:
      ArrayRecordImageSource(data_dir, split)
  except (FileNotFoundError, ValueError):
    return False
  return True


def build_dataset_dir(data_dir: str | os.PathLike, write: Callable[[pathlib.Path], None],
                      is_valid: Callable[[pathlib.Path], bool]) -> pathlib.Path:
  """Makes ``data_dir`` with ``write(tmp_dir)`` in a sibling temporary directory, then moves it in.

  A crash never leaves a half-written dataset under the final name; an existing (invalid or
  stale) ``data_dir`` is replaced as a whole. If another process finished first, its result is
  kept when ``is_valid(data_dir)``.
  """
  data_dir = pathlib.Path(data_dir)
  data_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{data_dir.name}_tmp", dir=data_dir.parent))
  try:
    write(tmp_dir)
    if data_dir.exists():
      shutil.rmtree(data_dir)
    try:
      os.replace(tmp_dir, data_dir)
    except OSError:
      # Another process finished first (the rename target is now a non-empty directory).
      if not is_valid(data_dir):
        raise
  finally:
    if tmp_dir.exists():
      shutil.rmtree(tmp_dir)
  return data_dir


def read_info(data_dir: str | os.PathLike) -> ImageDatasetInfo:
  """Reads ``metadata.json``; a clear ``FileNotFoundError`` if the directory holds none."""
  path = pathlib.Path(data_dir) / METADATA_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} does not exist: {data_dir} is not a glofnd_jax image dataset. Create one with "
        "`glofnd_jax.data.folder.convert_folder` (a folder of class subfolders).")
  return ImageDatasetInfo.from_json(json.loads(path.read_text()))


class ArrayRecordImageSource:
  """Random-access source over one split of our format (a grain ``RandomAccessDataSource``).

  ``source[i]`` is ``{'image': uint8 (H, W, C) array or encoded bytes, 'label': int}``; ``i`` is
  the record's global index within the split.

  Attributes:
    info: the dataset's :class:`ImageDatasetInfo`.
    split: the split read.
    num_classes, class_names, image_shape: shortcuts into ``info``.
  """

  def __init__(self, data_dir: str | os.PathLike, split: str):
    self.info = read_info(data_dir)
    self.split = split
    if split not in self.info.splits:
      raise ValueError(f"{data_dir} has no split {split!r}; it has {sorted(self.info.splits)}.")
    path = split_path(data_dir, split)
    if not path.is_file():
      raise FileNotFoundError(f"{path} is missing although {METADATA_FILE} lists split {split!r}.")
    self._records = grain.sources.ArrayRecordDataSource(str(path))
    if len(self._records) != self.info.splits[split]:
      raise ValueError(f"{path} holds {len(self._records)} records but {METADATA_FILE} says "
                       f"{self.info.splits[split]}: the dataset is incomplete; rewrite it.")
    self.num_classes = self.info.num_classes
    self.class_names = list(self.info.class_names)
    self.image_shape = None if self.info.image_shape is None else tuple(self.info.image_shape)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_record(self._records[index])

  def __repr__(self) -> str:
    return f"ArrayRecordImageSource(split={self.split!r}, num_records={len(self)})"
