"""The grain pipeline of image-caption batches (the stages of :mod:`glofnd_jax.data.pipeline`).

The key attached before the per-epoch shuffle, each epoch's remainder dropped, decode + resize +
tokenise per example, batches sliced per process (each process reads only its own rows), and a
``grain.DatasetIterator`` whose position is saved with every checkpoint. Batches carry the key
(:mod:`~glofnd_jax.data.pairs.contract`) as ``index_img`` and ``index_txt``.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import numpy as np

from glofnd_jax.data.decode import RESIZE_MODES, decode_image, resize_image
from glofnd_jax.data.pipeline import indexed_batches


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
  return indexed_batches(source, _AttachKey, decode, global_batch_size=global_batch_size,
                         seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                         drop_remainder=drop_remainder, process_index=process_index,
                         process_count=process_count, what="pairs")


def make_pair_iterator(source, tokenizer, *, read_threads: int = 1, prefetch_batches: int = 2,
                       **kwargs) -> grain.DatasetIterator:
  """A deterministic, checkpointable iterator over :func:`make_pair_dataset`'s batches."""
  dataset = make_pair_dataset(source, tokenizer, **kwargs)
  options = grain.ReadOptions(num_threads=read_threads,
                              prefetch_buffer_size=prefetch_batches if read_threads else 0)
  return iter(dataset.to_iter_dataset(options))
