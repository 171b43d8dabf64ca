"""Iterators over the pipeline's batches: concurrency, a step-counted resumable state, and
device prefetch.

* :func:`concurrency`: worker processes, read threads and prefetch depth, by default derived
  from the cores this process may use (``os.sched_getaffinity``, which SLURM's
  ``--cpus-per-task`` and ``taskset`` restrict).
* :class:`StepIterator`: a ``grain.DatasetIterator`` whose state is the number of batches it
  has yielded, ``{"step": k}``. The batches are a random-access ``MapDataset``, so the stream
  from step ``k`` is ``dataset[k:]``: resuming is exact and independent of how many worker
  processes or threads read it (grain's own multiprocessing state is per worker and would tie a
  checkpoint to one ``worker_count``).
* :class:`DevicePrefetch`: puts the next batch on the device (``jax.make_array_from_process_local_data``
  through the task's ``global_batch``) while the current step runs; its state is the position of
  the first batch not yet consumed, so a checkpoint never skips the batches in its buffer.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any, Callable, Iterator

import grain

# A worker process costs a whole Python + decode loop; below this many cores the main process's
# threads were faster (measured on 2 cores, see BENCHMARKS.md "Input pipeline").
MIN_CORES_FOR_WORKERS = 4
MAX_READ_THREADS = 16


def available_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def concurrency(worker_count: int = -1, read_threads: int = -1, prefetch_batches: int = -1,
                cores: int | None = None) -> tuple[int, int, int]:
  """``(worker_count, read_threads, prefetch_batches)`` with every ``-1`` replaced by its default.

  Defaults, for ``cores`` usable cores (:func:`available_cores`):

  * ``worker_count``: 0 (read in this process) below :data:`MIN_CORES_FOR_WORKERS` cores, else
    ``cores - 1`` (one core left to the train loop);
  * ``read_threads``: threads per reading process (decoding releases the GIL): ``min(cores,
    16)`` without workers, 2 per worker with them;
  * ``prefetch_batches``: batches each reading process keeps ready, ``2 * read_threads`` (at
    least 2). grain's threads each work on one buffered batch, so fewer buffered batches than
    threads would leave threads idle.
  """
  cores = available_cores() if cores is None else cores
  for name, value in (("worker_count", worker_count), ("read_threads", read_threads),
                      ("prefetch_batches", prefetch_batches)):
    if value < -1:
      raise ValueError(f"config.data.{name}={value} must be >= 0, or -1 for the default "
                       "derived from the host's cores.")
  if worker_count == -1:
    worker_count = 0 if cores < MIN_CORES_FOR_WORKERS else cores - 1
  if read_threads == -1:
    read_threads = 2 if worker_count else min(cores, MAX_READ_THREADS)
  if prefetch_batches == -1:
    prefetch_batches = max(2, 2 * read_threads)
  if read_threads and prefetch_batches < read_threads:
    raise ValueError(f"config.data.prefetch_batches={prefetch_batches} is below read_threads="
                     f"{read_threads}: only that many batches would be read at once; raise it.")
  return worker_count, read_threads, prefetch_batches


def _parse_absl_flags() -> None:
  """grain's worker processes read absl flags: make sure this process parsed them (a program
  not run through ``absl.app.run``, e.g. pytest or a plain script, has not)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1], known_only=True)


class StepIterator(grain.DatasetIterator):
  """Iterates ``dataset`` (a ``grain.MapDataset`` of batches) with grain's threads and workers.

  Args:
    dataset: element ``k`` is step ``k``'s batch.
    read_options: ``grain.ReadOptions`` (threads, prefetch buffer) of each reading process.
    worker_count: grain worker processes (``mp_prefetch``); 0 reads in this process.

  The state is ``{"step": k}`` (grain's ``{"next_index": k}`` of the same stream is accepted
  too). The reading pipeline starts on the first ``next`` (or ``start_prefetch``), so a
  ``set_state`` right after construction, as on a resume, costs nothing.
  """

  def __init__(self, dataset: grain.MapDataset, read_options: grain.ReadOptions,
               worker_count: int = 0):
    super().__init__()
    self.dataset, self.read_options, self.worker_count = dataset, read_options, worker_count
    self._step = 0
    self._inner: Iterator | None = None

  def _start(self) -> Iterator:
    if self._inner is None:
      iter_ds = self.dataset[self._step:].to_iter_dataset(self.read_options)
      if self.worker_count > 0:
        _parse_absl_flags()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
      self._inner = iter(iter_ds)
    return self._inner

  def __next__(self) -> Any:
    batch = next(self._start())
    self._step += 1
    return batch

  def start_prefetch(self) -> None:
    self._start()

  def get_state(self) -> dict[str, int]:
    return {"step": self._step}

  def set_state(self, state: dict[str, Any]) -> None:
    step = state.get("step", state.get("next_index"))
    if not isinstance(step, int) or step < 0:
      raise ValueError(f"data-iterator state {state!r} has no step count: it was not saved by "
                       "glofnd_jax.data.make_iterator.")
    self._close_inner()
    self._step = step

  def _close_inner(self) -> None:
    if self._inner is not None and hasattr(self._inner, "close"):
      self._inner.close()
    self._inner = None

  def close(self) -> None:
    self._close_inner()


class DevicePrefetch(grain.DatasetIterator):
  """Wraps a batch iterator: ``to_device(batch)`` of the next ``depth`` batches is issued ahead.

  JAX transfers asynchronously, so the next batch's host-to-device copy (and the host work of
  reading it) overlaps the step that is running. ``get_state`` / ``set_state`` are those of the
  wrapped iterator at the first batch not yet handed out (a checkpoint resumes at the batch
  after the last one trained on, whatever the buffer held).
  """

  def __init__(self, iterator, to_device: Callable[[Any], Any], depth: int = 1):
    super().__init__()
    if depth < 0:
      raise ValueError(f"device prefetch depth={depth} must be >= 0.")
    self.iterator, self.to_device, self.depth = iterator, to_device, depth
    self._buffer: collections.deque = collections.deque()  # (state before, device batch)

  def _fill(self, count: int) -> None:
    while len(self._buffer) < count:
      state = self.iterator.get_state()
      try:
        batch = next(self.iterator)
      except StopIteration:
        return
      self._buffer.append((state, self.to_device(batch)))

  def __next__(self):
    self._fill(self.depth + 1)
    if not self._buffer:
      raise StopIteration
    _, batch = self._buffer.popleft()  # the next `depth` are on their way already
    return batch

  def get_state(self):
    return self._buffer[0][0] if self._buffer else self.iterator.get_state()

  def set_state(self, state) -> None:
    self._buffer.clear()
    self.iterator.set_state(state)

  def close(self) -> None:
    self._buffer.clear()
    if hasattr(self.iterator, "close"):
      self.iterator.close()
