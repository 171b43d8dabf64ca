"""ImageNet-100: the 100-class ImageNet subset SogCLR and GloFND train on, from TFDS.

The subset's WordNet ids, in label order, ship in ``glofnd_jax/data_files/imagenet100_classes.txt``
(lines ``<wnid> <label>``; ``#`` comments). TFDS ``imagenet2012`` names its labels by WordNet id,
so the subset is a filter of the 1000-class data plus a remap of the kept labels to the subset's
order: train = the ImageNet-1K train images of these classes, ``validation`` = their 50
validation images each (5,000).

Filtering needs every record's label once (one pass over the split, images left undecoded);
pass ``cache_dir`` to keep the resulting record list (``.npy``) for later runs.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from glofnd_jax.data.tfds_source import TfdsSource

CLASSES_FILE = "imagenet100_classes.txt"


def load_class_list(path: str | os.PathLike | None = None) -> list[str]:
  """The subset's WordNet ids in label order (label ``k`` is the ``k``-th entry).

  Args:
    path: a class file; default: the copy shipped with the package.
  """
  if path is None:
    text = importlib.resources.files("glofnd_jax").joinpath("data_files", CLASSES_FILE).read_text()
  else:
    text = pathlib.Path(path).read_text()
  entries = []
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      wnid, label = line.split()
      entries.append((int(label), wnid))
  labels = sorted(label for label, _ in entries)
  if labels != list(range(len(entries))):
    raise ValueError(f"class file labels must be 0..{len(entries) - 1}, each once.")
  wnids = [wnid for _, wnid in sorted(entries)]
  if len(set(wnids)) != len(wnids):
    raise ValueError("class file lists a WordNet id twice.")
  return wnids


def label_map(full_class_names: Sequence[str], subset_class_names: Sequence[str]) -> np.ndarray:
  """Maps full-dataset labels to subset labels.

  Args:
    full_class_names: the full dataset's class names in label order (e.g. the 1000 wnids).
    subset_class_names: the subset's class names in its label order.

  Returns:
    int64 ``(len(full_class_names),)``: subset label of each full label, -1 if not in the subset.
  """
  position = {name: i for i, name in enumerate(full_class_names)}
  missing = [name for name in subset_class_names if name not in position]
  if missing:
    raise ValueError(f"{len(missing)} subset classes are not in the full dataset, e.g. "
                     f"{missing[:3]}: wrong dataset or class file?")
  mapping = np.full(len(full_class_names), -1, np.int64)
  for subset_label, name in enumerate(subset_class_names):
    mapping[position[name]] = subset_label
  return mapping


class SubsetSource:
  """A filtered, relabelled view of a source: record ``i`` is ``parent[keep[i]]`` with label
  ``mapping[parent label]``.

  Indices of this source (``0 .. len(keep) - 1``) are the global indices a training run uses;
  ``keep`` is kept sorted, so the order follows the parent.
  """

  def __init__(self, parent: Sequence[dict[str, Any]], keep: np.ndarray, mapping: np.ndarray,
               class_names: Sequence[str]):
    self._parent = parent
    self._keep = np.asarray(keep, np.int64)
    self._mapping = np.asarray(mapping, np.int64)
    self.class_names = list(class_names)
    self.num_classes = len(self.class_names)
    self.image_shape = getattr(parent, "image_shape", None)

  def __len__(self) -> int:
    return len(self._keep)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self._parent[int(self._keep[index])])
    label = int(self._mapping[record["label"]])
    if label < 0:
      raise ValueError(f"record {index} (parent {self._keep[index]}) has a label outside the "
                       "subset: stale cache of kept records?")
    record["label"] = label
    return record


def subset_indices(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
  """Sorted positions of records whose label maps into the subset, int64 ``(M,)``."""
  return np.flatnonzero(mapping[np.asarray(labels)] >= 0).astype(np.int64)


def imagenet100_source(split: str = "train", data_dir: str | os.PathLike | None = None, *,
                       cache_dir: str | os.PathLike | None = None,
                       dataset_name: str = "imagenet2012",
                       class_file: str | os.PathLike | None = None) -> SubsetSource:
  """ImageNet-100 ``split`` read from the prepared TFDS ``dataset_name`` in ``data_dir``.

  Args:
    split: TFDS split of the full dataset (``'train'`` or ``'validation'``).
    data_dir: TFDS data directory holding ``dataset_name`` as ArrayRecord.
    cache_dir: where to keep the kept-record list between runs (None: recompute each time).
    dataset_name: the full dataset (tests substitute a tiny one).
    class_file: subset class list; default: the shipped ImageNet-100 list.

  Returns:
    A :class:`SubsetSource` yielding ``{'image': encoded bytes or uint8 array, 'label': int in
    [0, 100)}``.
  """
  full = TfdsSource(dataset_name, split, data_dir)
  if full.class_names is None:
    raise ValueError(f"{dataset_name!r} has no label names to match WordNet ids against.")
  wnids = load_class_list(class_file)
  mapping = label_map(full.class_names, wnids)
  cache = None
  if cache_dir is not None:
    # Keyed by dataset, split and record count so a different copy never reuses a stale list.
    cache = pathlib.Path(cache_dir) / (f"{dataset_name.replace('/', '_')}_{split}_{len(full)}_"
                                       f"subset{len(wnids)}_keep.npy")
  if cache is not None and cache.is_file():
    keep = np.load(cache)
  else:
    keep = subset_indices(full.labels(), mapping)
    if cache is not None:
      cache.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache.with_name(cache.name + ".tmp.npy")
      np.save(tmp, keep)
      os.replace(tmp, cache)
  return SubsetSource(full, keep, mapping, wnids)
