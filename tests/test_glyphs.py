"""The embedded glyphs dataset: deterministic, balanced, disjoint splits, read like the others."""

import importlib.util
import pathlib

import numpy as np
import pytest

from glofnd_jax import data
from glofnd_jax.data import glyphs, records
from glofnd_jax.training import loop

TINY = (6, 2, 3)  # images per class: 372 / 124 / 186
CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glyphs_sogclr_glofnd.py"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return glyphs.prepare_glyphs(tmp_path_factory.mktemp("glyphs"), per_class=TINY)


def _split(data_dir, split):
  source = records.ArrayRecordImageSource(data_dir, split)
  items = [source[i] for i in range(len(source))]
  return (np.stack([item["image"] for item in items]),
          np.array([item["label"] for item in items]))


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_dir, tmp_path):
  again = glyphs.prepare_glyphs(tmp_path / "again", per_class=TINY)
  for split in glyphs.SPLITS:
    assert (records.split_path(tiny_dir, split).read_bytes()
            == records.split_path(again, split).read_bytes())
  info = records.read_info(tiny_dir)
  assert info.extra["fingerprint"] == records.read_info(again).extra["fingerprint"]
  other, _ = glyphs.generate(per_class=TINY, seed=1)
  assert glyphs.fingerprint(other) != info.extra["fingerprint"]


def test_classes_balanced_and_splits_disjoint(tiny_dir):
  info = records.read_info(tiny_dir)
  assert info.num_classes == 62 and info.class_names == list(glyphs.CLASS_NAMES)
  assert info.class_names[:11] == list("0123456789A") and info.class_names[-1] == "z"
  assert info.image_shape == [16, 16, 1] and len(info.extra["fonts"]) >= 15
  seen = set()
  for split, count in zip(glyphs.SPLITS, TINY):
    images, labels = _split(tiny_dir, split)
    assert images.shape == (62 * count, 16, 16, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels, minlength=62), np.full(62, count))
    hashes = {image.tobytes() for image in images}
    assert len(hashes) == len(images) and not hashes & seen
    seen |= hashes


def test_images_carry_the_class(tiny_dir):
  images, labels = _split(tiny_dir, "train")
  flat = images.reshape(len(images), -1).astype(np.float64)
  # Not blank: every image has a glyph brighter than its background.
  assert (flat.max(axis=1) - np.median(flat, axis=1) > 60).all()
  # Differ by class: class-mean images are farther apart between classes than the noise of a
  # mean, and a nearest-class-mean rule on the val split beats chance (1/62) many times over.
  means = np.stack([flat[labels == c].mean(axis=0) for c in range(62)])
  val_images, val_labels = _split(tiny_dir, "val")
  val = val_images.reshape(len(val_images), -1).astype(np.float64)
  nearest = np.argmin(((val[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (nearest == val_labels).mean() > 5 / 62


def test_masters_render_every_font_without_boxes():
  masters, fonts = glyphs.render_masters(32)
  assert masters.shape == (len(fonts), len(glyphs.STROKES), 62, glyphs.MASTER, glyphs.MASTER)
  assert {"DejaVuSans.ttf", "STIXGeneral.ttf", "cmr10.ttf"} <= set(fonts)
  # A thicker stroke covers more; lowercase 'o' is smaller than 'O' in every font.
  ink = masters.sum(axis=(-1, -2))
  assert (np.diff(ink, axis=1) > 0).all()
  o, big_o = glyphs.CLASS_NAMES.index("o"), glyphs.CLASS_NAMES.index("O")
  assert (ink[:, 0, o] < ink[:, 0, big_o]).all()


def test_bad_arguments_name_the_field(tmp_path):
  with pytest.raises(ValueError, match="image_size=20"):
    glyphs.prepare_glyphs(tmp_path, image_size=20, per_class=TINY)
  with pytest.raises(ValueError, match="per_class"):
    glyphs.prepare_glyphs(tmp_path, per_class=(1, 0, 1))
  with pytest.raises(ValueError, match="split 'dev'"):
    glyphs.glyphs_source(tmp_path, "dev", per_class=TINY)


def test_registry_and_grain_iterator(tiny_dir):
  source = data.get_source("glyphs", "val", data_dir=tiny_dir.parent, per_class=TINY)
  assert len(source) == 124 and source.class_names == list(glyphs.CLASS_NAMES)
  iterator = data.make_iterator(source, global_batch_size=31, seed=0, image_size=16, channels=1,
                                num_epochs=1, process_index=0, process_count=1)
  batches = list(iterator)
  assert len(batches) == 4 and batches[0]["image"].shape == (31, 16, 16, 1)
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(np.sort(index), np.arange(124))
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels, [source[i]["label"] for i in index])


def test_one_epoch_train_run(tmp_path, monkeypatch):
  """The recipe, shrunk, trains and evaluates on real (tiny) glyphs through the train loop."""
  spec = importlib.util.spec_from_file_location(CONFIG.stem, CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.read_threads = 0
  c.batch_size = 62
  c.epochs = 1
  c.model.proj_hidden_dim = 32
  c.model.proj_dim = 16
  c.optim.warmup_epochs = 0
  c.glofnd.start_update_epoch = c.glofnd.start_mask_epoch = 0
  c.eval.knn_k = 5
  c.eval.probe_fractions = (1.0,)
  c.eval.batch_size = 128
  c.log_every_steps = 2
  # The run's own cache is the tiny dataset: the run asks for the default size.
  monkeypatch.setattr(glyphs, "DEFAULT_PER_CLASS", TINY)
  results = loop.train_and_evaluate(c, tmp_path)
  assert 0.0 <= results["knn"]["top1"] <= 1.0
  assert results["lambda_error"]["num_samples"] == 62 * TINY[0]
