"""One entry point from a dataset name (as configs spell it) to a random-access source.

Every source yields ``{'image': uint8 (H, W, C) array or encoded bytes, 'label': int}`` and has
``len()``, ``num_classes`` and ``class_names``; feed it to
:func:`glofnd_jax.data.pipeline.make_iterator`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from glofnd_jax.data.digits import digits_source
from glofnd_jax.data.glyphs import glyphs_source
from glofnd_jax.data.imagenet100 import imagenet100_source
from glofnd_jax.data.records import ArrayRecordImageSource
from glofnd_jax.data.synthetic import SyntheticSource
from glofnd_jax.data.tfds_source import TfdsSource

NAMES = ("digits", "glyphs", "synthetic", "arrayrecord", "imagenet100", "tfds:<name>")


def get_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               workdir: str | os.PathLike | None = None, **kwargs: Any) -> Any:
  """Opens split ``split`` of dataset ``name``.

  Args:
    name: ``'digits'`` (embedded; splits train/val/test, prepared under ``workdir/data``),
      ``'glyphs'`` (embedded letters and digits, 62 classes, same splits and place; kwargs of
      :func:`~glofnd_jax.data.glyphs.glyphs_source`, e.g. ``image_size``), ``'synthetic'``
      (kwargs of :class:`SyntheticSource`), ``'arrayrecord'`` (our format at ``data_dir``),
      ``'imagenet100'`` (TFDS imagenet2012 in ``data_dir``; the kept-record list is cached under
      ``workdir/data``), or ``'tfds:<name>'`` (any TFDS dataset in ``data_dir``).
    split: split name as the dataset spells it (``'val'`` for ours, ``'validation'`` in TFDS).
    data_dir: where the data lives (our format's directory, or the TFDS data_dir).
    workdir: the run's work directory, for data derived on first use.
    **kwargs: passed to the source's constructor.
  """
  cache_root = None if workdir is None else pathlib.Path(workdir) / "data"
  if name in ("digits", "glyphs"):
    root = data_dir if data_dir is not None else cache_root
    if root is None:
      raise ValueError(f"the {name} need a directory to be written to: pass workdir or data_dir.")
    prepare = digits_source if name == "digits" else glyphs_source
    return prepare(root, split, **kwargs)
  if name == "synthetic":
    return SyntheticSource(split=split, **kwargs)
  if name == "arrayrecord":
    if data_dir is None:
      raise ValueError("dataset 'arrayrecord' needs data_dir: a directory written by "
                       "glofnd_jax.data.folder.convert_folder.")
    return ArrayRecordImageSource(data_dir, split, **kwargs)
  if name == "imagenet100":
    return imagenet100_source(split, data_dir, cache_dir=cache_root, **kwargs)
  if name.startswith("tfds:"):
    return TfdsSource(name[len("tfds:"):], split, data_dir, **kwargs)
  raise ValueError(f"unknown dataset {name!r}; known: {NAMES}.")
