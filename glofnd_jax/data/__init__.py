"""Input data: sources (random access, one record dict per example) and the grain pipeline.

Images (one class label per example):

* :mod:`~glofnd_jax.data.records`     our ArrayRecord image format (writer, reader, metadata).
* :mod:`~glofnd_jax.data.folder`      folder of class subfolders -> our format
  (``glofnd-jax convert-folder``).
* :mod:`~glofnd_jax.data.digits`      the embedded default: scikit-learn's digits, split, cached.
* :mod:`~glofnd_jax.data.glyphs`      embedded letters and digits rendered from matplotlib's fonts.
* :mod:`~glofnd_jax.data.tfds_source` prepared TFDS datasets, read without TensorFlow.
* :mod:`~glofnd_jax.data.imagenet100` the ImageNet-100 subset of TFDS imagenet2012.
* :mod:`~glofnd_jax.data.synthetic`   class-structured random images for tests.
* :mod:`~glofnd_jax.data.registry`    dataset name -> source.
* :mod:`~glofnd_jax.data.decode`      host-side decode/resize, run inside the pipeline.
* :mod:`~glofnd_jax.data.bad_records` records that do not decode: fatal, or a stand-in (skip).
* :mod:`~glofnd_jax.data.crops`       host random resized crops: two views from one decode.
* :mod:`~glofnd_jax.data.pipeline`    global index, shuffle, per-process slices, batches.
* :mod:`~glofnd_jax.data.iterators`   concurrency defaults, step-counted state, device prefetch.

Image-text:

* :mod:`~glofnd_jax.data.tokenizer`   the byte-level BPE caption tokenizer (train, load, CLI).
* :mod:`glofnd_jax.data.pairs`        image-caption sources (webdataset shards, ArrayRecord,
  TFDS, the embedded digits captions), bad-sample screening, the pair pipeline; see its index.

TFDS is imported only when a TFDS source is opened; nothing of ``pairs`` is imported here.
"""

from glofnd_jax.data.digits import digits_source, prepare_digits
from glofnd_jax.data.glyphs import glyphs_source, prepare_glyphs
from glofnd_jax.data.folder import convert_folder
from glofnd_jax.data.pipeline import make_dataset, make_iterator, steps_per_epoch
from glofnd_jax.data.records import ArrayRecordImageSource, ImageDatasetInfo
from glofnd_jax.data.registry import get_source
from glofnd_jax.data.synthetic import SyntheticSource
