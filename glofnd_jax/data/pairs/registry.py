"""Image-caption datasets by name: :func:`open_pair_source` (what ``config.data.name`` selects)."""

from __future__ import annotations

import os
import pathlib

from glofnd_jax.data.pairs import digits_captions
from glofnd_jax.data.pairs.arrayrecord import ArrayRecordPairSource
from glofnd_jax.data.pairs.tfds import TfdsPairSource
from glofnd_jax.data.pairs.webdataset import WebDatasetPairSource

PAIR_DATASETS = ("digits_captions", "webdataset", "arrayrecord_captions", "tfds:<name>")


def open_pair_source(name: str, split: str, *, shards: str = "", data_dir: str = "",
                     workdir: str | os.PathLike | None = None, key_field: str = "key",
                     caption_field: str = "caption", label_field: str = "label",
                     index_dir: str | os.PathLike | None = None, workers: int = 4,
                     seed: int = 0, on_damaged_shard: str = "fail"):
  """Opens split ``split`` of the image-caption dataset ``name`` (before screening).

  Args:
    name: ``'digits_captions'`` (embedded: written once under ``workdir/data``),
      ``'webdataset'`` (``shards``: a pattern for
      :func:`~glofnd_jax.data.pairs.shards.expand_shards`),
      ``'arrayrecord_captions'`` (our format in ``data_dir``) or ``'tfds:<name>'``
      (``caption_field`` names the caption feature, ``label_field`` an optional label feature).
    split: split name (for webdataset only used in messages: ``shards`` says what to read).
    shards, data_dir, workdir: where the data is.
    key_field, caption_field, label_field: json fields of webdataset samples.
    index_dir: cache directory of shard indexes.
    workers: threads for indexing.
    seed: the digits' split seed.
    on_damaged_shard: webdataset shards: ``'fail'`` or ``'skip'`` (see
      :class:`~glofnd_jax.data.pairs.webdataset.WebDatasetPairSource`).
  """
  if name == "digits_captions":
    root = data_dir or (None if workdir is None else pathlib.Path(workdir) / "data")
    if root is None:
      raise ValueError("digits_captions needs a directory to be written to: pass workdir.")
    directory = digits_captions.prepare_digits_captions(root, seed=seed)
    return WebDatasetPairSource(digits_captions.split_pattern(directory, split),
                                index_dir=index_dir, workers=workers)
  if name == "webdataset":
    if not shards:
      raise ValueError(f"dataset 'webdataset' split {split!r} needs its shards: a pattern such "
                       "as '/data/cc3m/{00000..00331}.tar'.")
    return WebDatasetPairSource(shards, key_field=key_field, caption_field=caption_field,
                                label_field=label_field, index_dir=index_dir, workers=workers,
                                on_damaged_shard=on_damaged_shard)
  if name == "arrayrecord_captions":
    if not data_dir:
      raise ValueError("dataset 'arrayrecord_captions' needs data.data_dir (written by "
                       "glofnd_jax.data.pairs.arrayrecord.write_pairs).")
    return ArrayRecordPairSource(data_dir, split)
  if name.startswith("tfds:"):
    return TfdsPairSource(name[len("tfds:"):], split, data_dir or None, caption_key=caption_field,
                          label_key=label_field)
  raise ValueError(f"unknown image-caption dataset {name!r}; known: {PAIR_DATASETS}.")
