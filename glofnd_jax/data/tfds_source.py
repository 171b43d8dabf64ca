"""Named TFDS datasets as random-access sources, read from ArrayRecord without TensorFlow.

``tfds.data_source`` reads datasets prepared with ``file_format='array_record'``. We never let
TFDS download or prepare anything (``download=False``): the dataset must already be in
``data_dir`` (a local folder or a bucket path), otherwise :class:`TfdsSource` raises a
``FileNotFoundError`` that names the dataset, the directory, and how to prepare it.

Image features are read undecoded (``tfds.decode.SkipDecoding``): the encoded bytes travel to
the grain pipeline, which decodes and resizes them in one step
(:class:`~glofnd_jax.data.decode.DecodeAndResize`).
"""

from __future__ import annotations

import os
from typing import Any

_PREPARE_HINT = (
    "Prepare it once, on a machine with TensorFlow and the raw files, with\n"
    "  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
    "(or builder.download_and_prepare(file_format='array_record')), then point data_dir at it.")


def _missing(name: str, data_dir: Any, why: str) -> FileNotFoundError:
  return FileNotFoundError(f"TFDS dataset {name!r} is not available in data_dir={data_dir!r}: "
                           f"{why}\n" + _PREPARE_HINT.format(name=name, data_dir=data_dir))


class TfdsSource:
  """One split of a prepared TFDS dataset, yielding our record dict.

  ``source[i]`` is ``{'image': uint8 array or encoded bytes, 'label': int}`` (the features named
  ``image_key`` and ``label_key``); ``i`` is the record's position in the split's ArrayRecord
  files.

  Attributes:
    name, split, data_dir: what was opened.
    num_classes: from the label feature (None when it is not a ``ClassLabel``).
    class_names: the label feature's names (for ImageNet: WordNet ids), or None.
    image_shape: the image feature's shape, with None for variable dimensions.
  """

  def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, *,
               image_key: str = "image", label_key: str = "label"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.name, self.split, self.data_dir = name, split, data_dir
    self._image_key, self._label_key = image_key, label_key
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise _missing(name, data_dir, "TFDS knows no such dataset and data_dir holds no prepared "
                     "copy of it.") from e
    if not builder.is_prepared():
      raise _missing(name, data_dir, f"nothing is prepared under {builder.data_dir}.")
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
      raise _missing(name, data_dir, f"it is prepared as {file_format!r}; reading without "
                     "TensorFlow needs 'array_record'.")
    if split not in builder.info.splits:
      raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                       f"{sorted(builder.info.splits)}.")
    features = builder.info.features
    for key in (image_key, label_key):
      if key not in features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {key!r}; it has "
                         f"{sorted(features.keys())}. Set image_key/label_key.")
    image_feature, label_feature = features[image_key], features[label_key]
    decoders = None
    if isinstance(image_feature, tfds.features.Image):
      decoders = {image_key: tfds.decode.SkipDecoding()}
    self._data = builder.as_data_source(split=split, decoders=decoders)
    self.num_classes = getattr(label_feature, "num_classes", None)
    names = getattr(label_feature, "names", None)
    self.class_names = list(names) if names else None
    self.image_shape = tuple(image_feature.shape)

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._data[index]
    return {"image": example[self._image_key], "label": int(example[self._label_key])}

  def labels(self, chunk_size: int = 4096) -> Any:
    """All labels in record order, int64 ``(N,)`` (reads every record once; images stay
    undecoded when the image feature is an ``Image``)."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    out = np.empty(len(self), np.int64)
    for start in range(0, len(self), chunk_size):
      keys = list(range(start, min(start + chunk_size, len(self))))
      for i, example in zip(keys, self._data.__getitems__(keys)):
        out[i] = int(example[self._label_key])
    return out

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, num_records={len(self)})"
