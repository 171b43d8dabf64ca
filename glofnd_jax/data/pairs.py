"""Image-caption pairs: sources, the bad-sample screen, and the grain pipeline that batches them.

**Sources** (random access; ``source[i]`` is ``{'image': encoded bytes or uint8 array,
'caption': str, 'label': int, 'key': int}``) all expose ``keys`` / ``labels`` arrays per
position, ``data_size`` (max key + 1), ``has_labels``, ``read_caption(i)``, ``read_image(i)``,
``describe(i)`` (where sample i lives, for messages) and ``fingerprint()``:

* :class:`~glofnd_jax.data.webdataset.WebDatasetPairSource`: webdataset tar shards;
* :class:`ArrayRecordPairSource`: our ArrayRecord image-caption format (:func:`write_pairs`);
* :class:`TfdsPairSource`: a prepared TFDS image-text dataset (key = record position).

**The key is the index.** A sample's key addresses its per-sample state (GloFND lambda, FastCLIP
``u``). Batches carry it as ``index_img`` and ``index_txt`` (equal: one key per pair), never the
sample's position in the source (which differs as soon as keys have holes or bad samples are
left out).

**Bad samples** (:func:`screen_samples`, run once per source and cached): an empty caption,
an image that does not decode (with ``verify_images``), or a sample without an image or caption.
``on_bad_sample='skip'`` leaves them out and counts them; ``'fail'`` raises an error naming the
shard and key. Screening happens before training because batches have a fixed size: a sample
cannot be dropped from a batch mid-run. Without ``verify_images`` an image that fails to decode
during training raises an error naming its shard and key.

**Pipeline** (:func:`make_pair_iterator`), the stages of :mod:`glofnd_jax.data.pipeline`: the
key attached before the per-epoch shuffle, each epoch's remainder dropped, decode + resize +
tokenise per example, batches sliced per process (each process reads only its own rows), and a
``grain.DatasetIterator`` whose position is saved with every checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import grain
import msgpack
import numpy as np

from glofnd_jax.data import pipeline, webdataset
from glofnd_jax.data.decode import RESIZE_MODES, decode_image, resize_image

BAD_SAMPLE_POLICIES = ("skip", "fail")


# ----------------------------------------------------------------------------- ArrayRecord pairs

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
    webdataset.check_keys(self.keys, lambda i: (self.path, f"record {i}"))
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


# ----------------------------------------------------------------------------- screening


class SubsetSource:
  """The positions of ``source`` kept by :func:`screen_samples`, as a source of their own."""

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


@dataclasses.dataclass
class Screened:
  """Result of :func:`screen_samples`.

  Attributes:
    source: the usable samples (a :class:`SubsetSource`, or the input when all are usable).
    report: ``{"num_samples", "num_kept", "unusable", "empty_captions", "bad_images"}``; each of
      the last three ``{"count", "examples"}`` with examples naming shard and key.
  """

  source: Any
  report: dict


def _check_one(source, position: int, verify_images: bool) -> str | None:
  """Why sample ``position`` is bad (``'empty_captions'`` / ``'bad_images'``), or None."""
  try:
    caption = source.read_caption(position)
  except (ValueError, UnicodeDecodeError):
    caption = ""
  if not caption:
    return "empty_captions"
  if verify_images:
    try:
      decode_image(source.read_image(position))
    except Exception:  # pylint: disable=broad-except  (Pillow raises many kinds)
      return "bad_images"
  return None


def screen_samples(source, *, on_bad_sample: str = "skip", verify_images: bool = True,
                   workers: int = 4, limit: int = 10,
                   cache_dir: str | os.PathLike | None = None) -> Screened:
  """Finds bad samples (empty caption, undecodable image, unusable structure); skips or fails.

  Args:
    source: a pair source.
    on_bad_sample: ``'skip'``: leave bad samples out (their keys become holes) and count them;
      ``'fail'``: raise ``ValueError`` naming the first bad sample's shard and key.
    verify_images: decode every image (one full pass over the data; cached). Captions are always
      checked.
    workers: threads.
    limit: examples kept per kind in the report.
    cache_dir: where the result is cached, keyed by ``source.fingerprint()`` and the settings.

  Returns:
    :class:`Screened`.
  """
  if on_bad_sample not in BAD_SAMPLE_POLICIES:
    raise ValueError(f"data.on_bad_sample={on_bad_sample!r} is invalid: use 'skip' or 'fail'.")
  unusable = [f"shard {shard} sample {name!r}: {reason}"
              for shard, name, reason in getattr(source, "problems", [])]
  if unusable and on_bad_sample == "fail":
    raise ValueError(f"{len(unusable)} unusable sample(s), e.g. {unusable[0]} "
                     "(data.on_bad_sample='fail'; set it to 'skip' to leave them out).")
  cache = None
  if cache_dir is not None:
    name = hashlib.sha1(f"{source.fingerprint()}:{verify_images}".encode()).hexdigest()
    cache = pathlib.Path(cache_dir) / f"screen_{name}.npz"
  bad_positions, kinds = None, None
  if cache is not None and cache.exists():
    with np.load(cache) as data:
      bad_positions, kinds = data["positions"], data["kinds"].tolist()
  if bad_positions is None:
    check = lambda i: _check_one(source, i, verify_images)
    if workers > 1:
      with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(check, range(len(source))))
    else:
      verdicts = [check(i) for i in range(len(source))]
    bad_positions = np.asarray([i for i, v in enumerate(verdicts) if v], np.int64)
    kinds = [v for v in verdicts if v]
    if cache is not None:
      cache.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache.with_name(cache.name + f".tmp{os.getpid()}.npz")
      np.savez(tmp, positions=bad_positions, kinds=np.asarray(kinds, dtype=str))
      os.replace(tmp, cache)
  report = {"num_samples": len(source) + len(unusable),
            "unusable": {"count": len(unusable), "examples": unusable[:limit]}}
  for kind in ("empty_captions", "bad_images"):
    where = [int(p) for p, k in zip(bad_positions.tolist(), kinds) if k == kind]
    report[kind] = {"count": len(where), "examples": [source.describe(p) for p in where[:limit]]}
  if len(bad_positions) and on_bad_sample == "fail":
    first = int(bad_positions[0])
    what = "an empty caption" if kinds[0] == "empty_captions" else "an image that does not decode"
    raise ValueError(f"{source.describe(first)} has {what} ({len(bad_positions)} bad sample(s) "
                     "in all; data.on_bad_sample='fail'; set it to 'skip' to leave them out).")
  report["num_kept"] = len(source) - len(bad_positions)
  if report["num_kept"] == 0:
    raise ValueError(f"every sample is bad ({report}); check the data.")
  if len(bad_positions) == 0:
    return Screened(source, report)
  keep = np.ones(len(source), bool)
  keep[bad_positions] = False
  return Screened(SubsetSource(source, np.flatnonzero(keep)), report)


# ----------------------------------------------------------------------------- pipeline


class _AttachKey:
  """``map_with_index``: adds ``position`` (in the source) and ``index`` = the sample's key.

  Positions past the source (evaluation padding) get index and label -1.
  """

  def __init__(self, num_records: int, padded_length: int):
    self._num_records, self._padded_length = num_records, padded_length

  def __call__(self, position: int, record: dict[str, Any]) -> dict[str, Any]:
    position = position % self._padded_length
    record = dict(record)
    record["position"] = position % self._num_records
    if position >= self._num_records:
      record["key"], record["label"] = -1, -1
    return record


class DecodeAndTokenize:
  """Per-example stage: image -> uint8 ``(H, W, C)``; caption -> int32 ``(context_length,)``."""

  def __init__(self, source, tokenizer: Callable[[str], np.ndarray],
               image_size: tuple[int, int] | None, channels: int | None, resize_mode: str):
    if resize_mode not in RESIZE_MODES:
      raise ValueError(f"resize mode {resize_mode!r} is not one of {RESIZE_MODES}.")
    self._source, self._tokenizer = source, tokenizer
    self._image_size, self._channels, self._resize_mode = image_size, channels, resize_mode

  def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
    try:
      image = decode_image(record["image"], self._channels)
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(
          f"the image of {self._source.describe(record['position'])} does not decode ({error}). "
          "Screen the data with data.verify_images=True: bad samples are then skipped or fail "
          "per data.on_bad_sample before training starts.") from error
    if self._image_size is not None:
      image = resize_image(image, self._image_size, self._resize_mode)
    key = np.int32(record["key"])
    return {"image": image, "text": np.asarray(self._tokenizer(record["caption"]), np.int32),
            "index_img": key, "index_txt": key, "label": np.int32(record["label"])}


def make_pair_dataset(source, tokenizer: Callable[[str], np.ndarray], *, global_batch_size: int,
                      seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                      drop_remainder: bool = True,
                      image_size: int | tuple[int, int] | None = None,
                      channels: int | None = None, resize_mode: str = "center_crop",
                      process_index: int | None = None,
                      process_count: int | None = None) -> grain.MapDataset:
  """This process's stream of image-caption batches (the stages of the module docstring).

  Args:
    source: a pair source.
    tokenizer: ``caption -> int32 (context_length,)`` (e.g. a
      :class:`glofnd_jax.data.tokenizer.ClipTokenizer`).
    global_batch_size ... process_count: as :func:`glofnd_jax.data.pipeline.make_dataset`.

  Returns:
    A ``MapDataset`` whose element ``k`` is local step ``k``'s batch ``{'image': uint8 (b, H, W,
    C), 'text': int32 (b, L), 'index_img', 'index_txt': int32 (b,) keys, 'label': int32 (b,)}``;
    evaluation padding rows have key and label -1.
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  decode = DecodeAndTokenize(source, tokenizer, image_size, channels, resize_mode)
  return pipeline.indexed_batches(source, _AttachKey, decode,
                                  global_batch_size=global_batch_size, seed=seed,
                                  shuffle=shuffle, num_epochs=num_epochs,
                                  drop_remainder=drop_remainder, process_index=process_index,
                                  process_count=process_count, what="pairs")


def make_pair_iterator(source, tokenizer, *, read_threads: int = 1, prefetch_batches: int = 2,
                       **kwargs) -> grain.DatasetIterator:
  """A deterministic, checkpointable iterator over :func:`make_pair_dataset`'s batches."""
  dataset = make_pair_dataset(source, tokenizer, **kwargs)
  options = grain.ReadOptions(num_threads=read_threads,
                              prefetch_buffer_size=prefetch_batches if read_threads else 0)
  return iter(dataset.to_iter_dataset(options))


# ----------------------------------------------------------------------------- by name

PAIR_DATASETS = ("digits_captions", "webdataset", "arrayrecord_captions", "tfds:<name>")


def open_pair_source(name: str, split: str, *, shards: str = "", data_dir: str = "",
                     workdir: str | os.PathLike | None = None, key_field: str = "key",
                     caption_field: str = "caption", label_field: str = "label",
                     index_dir: str | os.PathLike | None = None, workers: int = 4,
                     seed: int = 0):
  """Opens split ``split`` of the image-caption dataset ``name`` (before screening).

  Args:
    name: ``'digits_captions'`` (embedded: written once under ``workdir/data``),
      ``'webdataset'`` (``shards``: a pattern for :func:`webdataset.expand_shards`),
      ``'arrayrecord_captions'`` (our format in ``data_dir``) or ``'tfds:<name>'``
      (``caption_field`` names the caption feature, ``label_field`` an optional label feature).
    split: split name (for webdataset only used in messages: ``shards`` says what to read).
    shards, data_dir, workdir: where the data is.
    key_field, caption_field, label_field: json fields of webdataset samples.
    index_dir: cache directory of shard indexes.
    workers: threads for indexing.
    seed: the digits' split seed.
  """
  if name == "digits_captions":
    from glofnd_jax.data import captions  # pylint: disable=g-import-not-at-top
    root = data_dir or (None if workdir is None else pathlib.Path(workdir) / "data")
    if root is None:
      raise ValueError("digits_captions needs a directory to be written to: pass workdir.")
    directory = captions.prepare_digits_captions(root, seed=seed)
    return webdataset.WebDatasetPairSource(captions.split_pattern(directory, split),
                                           index_dir=index_dir, workers=workers)
  if name == "webdataset":
    if not shards:
      raise ValueError(f"dataset 'webdataset' split {split!r} needs its shards: a pattern such "
                       "as '/data/cc3m/{00000..00331}.tar'.")
    return webdataset.WebDatasetPairSource(shards, key_field=key_field,
                                           caption_field=caption_field, label_field=label_field,
                                           index_dir=index_dir, workers=workers)
  if name == "arrayrecord_captions":
    if not data_dir:
      raise ValueError("dataset 'arrayrecord_captions' needs data.data_dir (written by "
                       "glofnd_jax.data.pairs.write_pairs).")
    return ArrayRecordPairSource(data_dir, split)
  if name.startswith("tfds:"):
    return TfdsPairSource(name[len("tfds:"):], split, data_dir or None, caption_key=caption_field,
                          label_key=label_field)
  raise ValueError(f"unknown image-caption dataset {name!r}; known: {PAIR_DATASETS}.")
