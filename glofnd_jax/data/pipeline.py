"""The grain input pipeline: global indices, per-epoch shuffles, per-process slices, batches.

Every batch carries each example's **global index** (its position in the source), which GloFND
and SogCLR use to address per-sample state. The stages, all on ``grain.MapDataset`` (lazy and
random-access, so each process only reads and decodes its own examples):

1. ``MapDataset.source(source)``, padded to whole global batches only when
   ``drop_remainder=False`` (evaluation; padding rows have ``index = label = -1``);
2. ``map_with_index``: attach ``index`` **before** shuffling (afterwards a position means
   nothing);
3. ``shuffle(seed)``: grain reseeds each epoch (``seed + epoch``), so every epoch is a new
   permutation;
4. ``[:steps_per_epoch * global_batch]``: drop each epoch's remainder, so an epoch is a whole
   number of steps on every process and no batch mixes two epochs;
5. decode / resize per example (:class:`~glofnd_jax.data.decode.DecodeAndResize`), or, for
   training with ``host_crop``, decode once and cut two random resized crops
   (:class:`~glofnd_jax.data.crops.RandomCropViews`); a record that does not decode is fatal
   or replaced by a stand-in, per ``on_bad_sample`` (:mod:`~glofnd_jax.data.bad_records`);
6. ``batch(local_batch)`` then ``[process_index::process_count]``: global batch ``s`` is the
   ``process_count`` consecutive local batches ``s * P ... s * P + P - 1``; process ``p`` takes
   the ``p``-th. Concatenated in process order they form the global batch, which is what
   ``jax.make_array_from_process_local_data`` with a ``P('data')`` sharding expects;
7. ``repeat(num_epochs)``.

Local step ``k`` therefore belongs to epoch ``k // steps_per_epoch`` on every process. The
iterator (:func:`make_iterator`) is a :class:`~glofnd_jax.data.iterators.StepIterator`: its state
is the step, ``get_state()`` / ``set_state()`` (or ``grain.checkpoint.CheckpointSave``) resume it
exactly, with or without worker processes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import grain
import jax

from glofnd_jax.data import bad_records, iterators
from glofnd_jax.data.crops import HostCropConfig, RandomCropViews
from glofnd_jax.data.decode import DecodeAndResize


def steps_per_epoch(num_records: int, global_batch_size: int, drop_remainder: bool = True) -> int:
  """Global batches per epoch: ``N // B`` when dropping the remainder, else ``ceil(N / B)``."""
  if drop_remainder:
    return num_records // global_batch_size
  return math.ceil(num_records / global_batch_size)


class _PadToLength:
  """A source ``length`` long: positions past the end repeat earlier records (later marked)."""

  def __init__(self, source: Sequence[Any], length: int):
    self._source = source
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, position: int) -> Any:
    return self._source[position % len(self._source)]


class _AttachIndex:
  """``map_with_index`` transform adding ``'index'``: the record's position in the source.

  grain passes positions beyond the dataset length for later epochs (``epoch * length + i``),
  hence the modulo. Positions at or past ``num_records`` are padding: index and label -1.
  """

  def __init__(self, num_records: int, padded_length: int):
    self._num_records = num_records
    self._padded_length = padded_length

  def __call__(self, position: int, record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    record["epoch"] = position // self._padded_length  # before the modulo: seeds host crops
    position = position % self._padded_length
    if position < self._num_records:
      record["index"] = position
    else:
      record["index"] = -1
      record["label"] = -1
    return record


def indexed_batches(source: Sequence[Any], attach: Callable[[int, int], Callable],
                    decode: Callable[[dict[str, Any]], dict[str, Any]], *,
                    global_batch_size: int, seed: int, shuffle: bool, num_epochs: int | None,
                    drop_remainder: bool, process_index: int | None,
                    process_count: int | None, what: str = "records") -> grain.MapDataset:
  """Stages 1-7 of the module doc for any record type (images here, image-text pairs too).

  Args:
    source: random-access source.
    attach: ``attach(num_records, padded_length)`` returns the ``map_with_index`` transform that
      records each example's position / key (and marks padding rows); it runs before the shuffle.
    decode: per-example transform run after the shuffle and the epoch slice.
    global_batch_size ... process_count: as :func:`make_dataset`.
    what: the records' name in error messages.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of the "
                     f"process count {process_count}.")
  if not drop_remainder and shuffle:
    raise ValueError("drop_remainder=False pads the last batch and is meant for evaluation: use "
                     "it with shuffle=False.")
  num_records = len(source)
  steps = steps_per_epoch(num_records, global_batch_size, drop_remainder)
  if steps == 0:
    raise ValueError(f"the source holds {num_records} {what}, fewer than one global batch of "
                     f"{global_batch_size}: lower the batch size.")
  epoch_length = steps * global_batch_size

  padded_length = max(num_records, epoch_length)
  if padded_length > num_records:
    source = _PadToLength(source, padded_length)
  ds = grain.MapDataset.source(source)
  ds = ds.map_with_index(attach(num_records, padded_length))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[:epoch_length]
  ds = ds.map(decode)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  ds = ds[process_index::process_count]
  return ds.repeat(num_epochs)


def make_dataset(source: Sequence[dict[str, Any]], *, global_batch_size: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True, image_size: int | tuple[int, int] | None = None,
                 channels: int | None = None, resize_mode: str = "center_crop",
                 host_crop: HostCropConfig | None = None, on_bad_sample: str = "fail",
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """The per-process stream of batches as a lazy ``grain.MapDataset`` (see the module doc).

  Args:
    source: random-access source; ``source[i]`` is ``{'image': uint8 array or encoded bytes,
      'label': int}``.
    global_batch_size: examples per step over all processes; divisible by ``process_count``.
    seed: shuffle seed in ``[0, 2**32)``; epoch ``e`` uses permutation ``seed + e``.
    shuffle: shuffle each epoch (training) or keep source order (evaluation).
    num_epochs: epochs to yield, None for an endless stream.
    drop_remainder: drop each epoch's last ``N mod global_batch_size`` examples (training). If
      False (evaluation; requires ``shuffle=False``), the last batch is padded with rows whose
      ``index`` and ``label`` are -1: drop those rows before using the batch.
    image_size: resize every image to ``(height, width)`` (an int means square); required when
      the source's images differ in size.
    channels: convert images to 1 or 3 channels; None keeps them as stored.
    resize_mode: ``'center_crop'`` (keep aspect ratio) or ``'stretch'``, see
      :func:`~glofnd_jax.data.decode.resize_image`.
    host_crop: training views cut on the host (:mod:`~glofnd_jax.data.crops`): ``image`` is
      then ``(b, views, h, w, C)``, random resized crops of the whole original image, and
      ``image_size`` is not used. Crops are seeded by ``(seed, epoch, index)``.
    on_bad_sample: a record whose image does not decode: ``'fail'`` raises one line naming its
      index and source file; ``'skip'`` puts a stand-in image in its place (needs
      ``image_size`` or ``host_crop``, and ``channels``) and sets the row's ``substituted``
      field (:mod:`~glofnd_jax.data.bad_records`).
    process_index, process_count: this process's slot; default ``jax.process_index()`` /
      ``jax.process_count()``.

  Returns:
    A ``MapDataset`` whose element ``k`` is local step ``k``'s batch: ``{'image': uint8 (b, H,
    W, C), 'label': int32 (b,), 'index': int32 (b,), 'substituted': bool (b,)}`` with ``b =
    global_batch_size // process_count``; ``index`` is the global index into ``source``.
  """
  decode = decode_stage(image_size=image_size, channels=channels, resize_mode=resize_mode,
                        host_crop=host_crop, seed=seed, on_bad_sample=on_bad_sample)
  return indexed_batches(source, _AttachIndex, decode,
                         global_batch_size=global_batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, drop_remainder=drop_remainder,
                         process_index=process_index, process_count=process_count)


def decode_stage(*, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
                 resize_mode: str = "center_crop", host_crop: HostCropConfig | None = None,
                 seed: int = 0, on_bad_sample: str = "fail") -> bad_records.GuardedDecode:
  """The per-example stage of :func:`make_dataset` (same arguments): record -> example."""
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  if host_crop is not None:
    decode = RandomCropViews(host_crop, channels, seed)
    shape = None if channels is None else (host_crop.views, *host_crop.size, channels)
  else:
    decode = DecodeAndResize(image_size, channels, resize_mode)
    shape = None if image_size is None or channels is None else (*image_size, channels)
  return bad_records.GuardedDecode(decode, on_bad_sample, shape)


def make_iterator(source: Sequence[dict[str, Any]], *, global_batch_size: int, seed: int = 0,
                  shuffle: bool = True, num_epochs: int | None = None,
                  drop_remainder: bool = True, image_size: int | tuple[int, int] | None = None,
                  channels: int | None = None, resize_mode: str = "center_crop",
                  host_crop: HostCropConfig | None = None, on_bad_sample: str = "fail",
                  process_index: int | None = None,
                  process_count: int | None = None, worker_count: int = -1,
                  read_threads: int = -1,
                  prefetch_batches: int = -1) -> iterators.StepIterator:
  """A deterministic, checkpointable iterator over :func:`make_dataset`'s batches.

  Args:
    source ... process_count: as in :func:`make_dataset`.
    worker_count: grain worker processes (``mp_prefetch``); 0 reads in this process. The
      source and the decode stage are pickled to the workers (ours are). With workers, a script
      started with ``python script.py`` must build the iterator under
      ``if __name__ == '__main__'`` (workers are spawned, and re-import the main module).
    read_threads: threads reading and decoding batches ahead in each reading process (0:
      synchronous).
    prefetch_batches: batches each reading process keeps ready (memory: this many batches).
    -1 for any of the three: the default derived from the cores this process may use
    (:func:`~glofnd_jax.data.iterators.concurrency`).

  Returns:
    A :class:`~glofnd_jax.data.iterators.StepIterator` yielding the batch dicts;
    ``get_state()`` is ``{"step": k}`` and ``set_state(state)`` resumes from it, for any worker
    or thread count. Close it (``close()``) when done if it has workers.
  """
  dataset = make_dataset(source, global_batch_size=global_batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, drop_remainder=drop_remainder,
                         image_size=image_size, channels=channels, resize_mode=resize_mode,
                         host_crop=host_crop, on_bad_sample=on_bad_sample,
                         process_index=process_index, process_count=process_count)
  worker_count, read_threads, prefetch_batches = iterators.concurrency(
      worker_count, read_threads, prefetch_batches)
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=prefetch_batches if read_threads else 0)
  return iterators.StepIterator(dataset, read_options, worker_count)
