"""The embedded default dataset: scikit-learn's bundled handwritten digits, in our format.

``sklearn.datasets.load_digits`` ships 1,797 grayscale 8x8 images (pixel values 0..16) of 10
classes inside the scikit-learn package: no download. On first use :func:`prepare_digits`
scales them to uint8 (``round(v * 255 / 16)``), makes a seeded stratified train/val/test split,
and writes each split as ArrayRecord (:mod:`glofnd_jax.data.records`) under a directory it
returns. A record's index within its split is its global index for the training run; the
original scikit-learn row of every record is kept in ``metadata.json``
(``extra['source_indices'][split]``), which is the stored split membership.

Later calls reuse the directory when its metadata matches the requested split (seed and
fractions) and every file is complete; otherwise it is rebuilt.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from glofnd_jax.data import records

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def split_indices(labels: np.ndarray, fractions: tuple[float, float, float],
                  seed: int) -> dict[str, np.ndarray]:
  """Seeded stratified split of ``range(len(labels))`` into train/val/test.

  Within each class the rows are permuted with ``seed`` and cut at the cumulative fractions
  (rounded), so every split holds about ``fraction`` of every class.

  Args:
    labels: int ``(N,)``.
    fractions: ``(train, val, test)``, non-negative, summing to 1.
    seed: permutation seed.

  Returns:
    split name -> sorted int64 row indices; the three are disjoint and cover ``range(N)``.
  """
  fractions = np.asarray(fractions, np.float64)
  if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
    raise ValueError(f"fractions={tuple(fractions)} must be 3 non-negative numbers summing to 1.")
  rng = np.random.default_rng(seed)
  parts = {name: [] for name in SPLITS}
  for label in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == label))
    cuts = np.rint(np.cumsum(fractions)[:2] * len(rows)).astype(int)
    for name, chunk in zip(SPLITS, np.split(rows, cuts)):
      parts[name].append(chunk)
  return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 (1797, 8, 8, 1), labels int64 (1797,))`` from scikit-learn's bundle."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  bunch = load_digits()
  images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
  return images, bunch.target.astype(np.int64)


def _is_valid(data_dir: pathlib.Path, seed: int, fractions: tuple[float, ...]) -> bool:
  return records.is_complete(data_dir, SPLITS, {"seed": seed, "fractions": list(fractions)})


def prepare_digits(root_dir: str | os.PathLike, *, seed: int = 0,
                   fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> pathlib.Path:
  """Writes (or reuses) the digits dataset under ``root_dir``; returns its directory.

  Args:
    root_dir: parent directory, e.g. ``<workdir>/data``; the dataset goes to
      ``root_dir/digits_seed<seed>``.
    seed: split seed.
    fractions: ``(train, val, test)`` fractions.

  Returns:
    The dataset directory, readable with :func:`digits_source` or
    :class:`~glofnd_jax.data.records.ArrayRecordImageSource`.
  """
  fractions = tuple(float(f) for f in fractions)
  data_dir = pathlib.Path(root_dir) / f"digits_seed{seed}"
  if _is_valid(data_dir, seed, fractions):
    return data_dir
  images, labels = _load_digits_uint8()
  parts = split_indices(labels, fractions, seed)

  def write(tmp_dir):
    sizes = {}
    for split in SPLITS:
      rows = parts[split]
      sizes[split] = records.write_split(tmp_dir, split, zip(images[rows], labels[rows]))
    records.write_info(tmp_dir, records.ImageDatasetInfo(
        num_classes=10, class_names=[str(d) for d in range(10)], image_shape=[8, 8, 1],
        encoding="raw", splits=sizes,
        extra={"source": "sklearn.datasets.load_digits", "seed": seed,
               "fractions": list(fractions),
               "source_indices": {s: parts[s].tolist() for s in SPLITS}}))

  return records.build_dataset_dir(data_dir, write,
                                   lambda path: _is_valid(path, seed, fractions))


def digits_source(root_dir: str | os.PathLike, split: str = "train", *, seed: int = 0,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
                  ) -> records.ArrayRecordImageSource:
  """One split of the digits (prepared on first use): records ``{'image': uint8 (8, 8, 1),
  'label': int}``, 1,257 train / 180 val / 360 test with the default fractions."""
  if split not in SPLITS:
    raise ValueError(f"digits split {split!r} is not one of {SPLITS}.")
  return records.ArrayRecordImageSource(
      prepare_digits(root_dir, seed=seed, fractions=fractions), split)
