"""The training input pipeline: concurrency from the config, exact resume with worker processes,
device prefetch, host-side random resized crops (torchvision's geometry over the whole image, two
views from one decode, JPEG draft), and the recipes' augmentation parameters."""

import importlib.util
import io
import math
import pathlib
import re
import types

import cv2
import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from glofnd_jax import augment as aug
from glofnd_jax.config import unimodal as unimodal_config
from glofnd_jax.data import crops, iterators, pipeline, resample
from glofnd_jax.training.unimodal import UnimodalRun

ROOT = pathlib.Path(__file__).resolve().parents[1]


class CountingSource:
  """``source[i]``: a 2x2 image filled with ``i % 256``; picklable (grain workers unpickle it)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 1), i % 256, np.uint8), "label": i % 3}


def _jpeg(width=500, height=400, seed=0) -> bytes:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width]
  base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
  pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


# ----------------------------------------------------------------------------- concurrency


def test_concurrency_defaults_follow_the_cores_and_explicit_values_win():
  assert iterators.concurrency(cores=2) == (0, 2, 4)
  assert iterators.concurrency(cores=16) == (15, 2, 4)
  assert iterators.concurrency(cores=8, worker_count=0) == (0, 8, 16)
  assert iterators.concurrency(3, 5, 7, cores=64) == (3, 5, 7)
  assert iterators.concurrency(0, 0, 0, cores=64) == (0, 0, 0)
  with pytest.raises(ValueError, match="prefetch_batches=2 is below read_threads=4"):
    iterators.concurrency(0, 4, 2)
  with pytest.raises(ValueError, match="config.data.worker_count=-2"):
    iterators.concurrency(-2)


def test_config_keys_reach_grain():
  config = unimodal_config.base_config()
  config.data.worker_count, config.data.read_threads, config.data.prefetch_batches = 3, 5, 7
  run = types.SimpleNamespace(config=config, source=CountingSource(40), batch=8, host_crop=None)
  iterator = UnimodalRun.iterator(run)
  assert isinstance(iterator, iterators.StepIterator)
  assert iterator.worker_count == 3
  assert iterator.read_options.num_threads == 5
  assert iterator.read_options.prefetch_buffer_size == 7


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_resume_is_exact_with_worker_processes():
  kwargs = dict(global_batch_size=4, seed=5, process_index=0, process_count=1, read_threads=1,
                prefetch_batches=2)
  source = CountingSource(10)  # 2 steps per epoch: the resumed stretch crosses epochs
  reference = pipeline.make_iterator(source, worker_count=0, **kwargs)
  expected = _take(reference, 7)[3:]
  with_workers = pipeline.make_iterator(source, worker_count=2, **kwargs)
  try:
    first = _take(with_workers, 3)
    state = with_workers.get_state()
  finally:
    with_workers.close()
  assert state == {"step": 3}
  for got, want in zip(first, _take(pipeline.make_iterator(source, worker_count=0, **kwargs), 3)):
    np.testing.assert_array_equal(got["index"], want["index"])
  resumed = pipeline.make_iterator(source, worker_count=2, **kwargs)
  resumed.set_state(state)
  try:
    got = _take(resumed, 4)
  finally:
    resumed.close()
  for want_batch, got_batch in zip(expected, got):
    np.testing.assert_array_equal(want_batch["index"], got_batch["index"])
    np.testing.assert_array_equal(want_batch["image"], got_batch["image"])


def test_device_prefetch_state_is_the_first_batch_not_consumed():
  kwargs = dict(global_batch_size=2, seed=1, process_index=0, process_count=1)
  moved = []
  batches = iterators.DevicePrefetch(pipeline.make_iterator(CountingSource(12), **kwargs),
                                     lambda b: moved.append(1) or jax.device_put(b), depth=1)
  first = next(batches)
  assert len(moved) == 2  # the next batch was sent before this one was handed out
  assert isinstance(first["image"], jax.Array) and first["image"].dtype == np.uint8
  next(batches)
  state = batches.get_state()
  assert state == {"step": 2}
  expected = next(batches)
  resumed = iterators.DevicePrefetch(pipeline.make_iterator(CountingSource(12), **kwargs),
                                     jax.device_put)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["index"], expected["index"])


# ----------------------------------------------------------------------------- host crops


def torchvision_reference_box(rng, height, width, scale, ratio):
  """torchvision's ``RandomResizedCrop.get_params`` written from its description, one try at a
  time (the production sampler draws all tries at once)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height, width", [(400, 500), (100, 400)])
def test_crop_geometry_follows_torchvision(height, width):
  scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000
  ours = crops.sample_boxes(np.random.default_rng(0), height, width, n, scale, ratio)
  rng = np.random.default_rng(1)
  ref = np.array([torchvision_reference_box(rng, height, width, scale, ratio) for _ in range(n)])
  for boxes in (ours, ref):
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= height).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
  features = [lambda b: b[:, 2] * b[:, 3] / (height * width),  # area fraction
              lambda b: np.log(b[:, 3] / b[:, 2]),              # log aspect ratio
              lambda b: (b[:, 0] + b[:, 2] / 2) / height,       # centre row
              lambda b: (b[:, 1] + b[:, 3] / 2) / width]        # centre column
  for feature in features:
    assert stats.ks_2samp(feature(ours), feature(ref)).pvalue > 1e-3
  # The test has power: a sampler with another scale range is told apart.
  other = crops.sample_boxes(np.random.default_rng(2), height, width, n, (0.2, 1.0), ratio)
  assert stats.ks_2samp(features[0](other), features[0](ref)).pvalue < 1e-6


def test_views_are_cut_from_the_whole_image_in_one_decode(monkeypatch):
  jpeg = _jpeg()
  opened = []
  real_decode = crops.cv2.imdecode
  monkeypatch.setattr(crops.cv2, "imdecode", lambda *a: opened.append(1) or real_decode(*a))
  config = crops.HostCropConfig(size=(32, 32))
  rng = np.random.default_rng(0)
  boxes = []
  for _ in range(300):
    views, box = crops.crop_views(jpeg, rng, config, channels=3)
    assert views.shape == (2, 32, 32, 3) and views.dtype == np.uint8
    boxes.append(box)
  assert len(opened) == 300  # one decode per example for both views
  boxes = np.concatenate(boxes)
  # Crops reach all four borders of the original 500x400 image, and cover up to all of it.
  assert (boxes[:, 0] == 0).any() and (boxes[:, 1] == 0).any()
  assert (boxes[:, 0] + boxes[:, 2] == 400).any() and (boxes[:, 1] + boxes[:, 3] == 500).any()
  assert (boxes[:, 2] * boxes[:, 3]).max() / (400 * 500) > 0.9


def test_jpeg_draft_only_when_every_box_is_large_and_matches_the_full_decode():
  size = (224, 224)
  assert crops.draft_factor(np.array([[0, 0, 500, 480], [0, 0, 460, 450]]), size) == 2
  assert crops.draft_factor(np.array([[0, 0, 2000, 1900], [0, 0, 1800, 1800]]), size) == 8
  assert crops.draft_factor(np.array([[0, 0, 500, 480], [0, 0, 300, 450]]), size) == 1
  jpeg = _jpeg(1200, 1000)
  config = crops.HostCropConfig(size=(64, 64), scale=(0.9, 1.0))
  fast, boxes = crops.crop_views(jpeg, np.random.default_rng(3), config)
  full, same_boxes = crops.crop_views(jpeg, np.random.default_rng(3),
                                      crops.HostCropConfig(size=(64, 64), scale=(0.9, 1.0),
                                                           draft=False))
  np.testing.assert_array_equal(boxes, same_boxes)
  assert crops.draft_factor(boxes, config.size) == 8
  assert np.abs(fast.astype(float) - full.astype(float)).mean() < 4.0


def _photo_crops(count: int):
  """``count`` random resized crop boxes on each of scikit-learn's two sample photos (427x640)."""
  from sklearn.datasets import load_sample_images  # ships the photos: no download
  for seed, photo in enumerate(load_sample_images().images):
    for box in crops.sample_boxes(np.random.default_rng(seed), *photo.shape[:2], count,
                                  (0.08, 1.0), (3 / 4, 4 / 3)):
      top, left, height, width = box
      yield photo[top:top + height, left:left + width]


def test_resize_matches_pillows_antialiased_bilinear_within_a_stated_tolerance():
  """OpenCV blur + bilinear vs torchvision's resize (Pillow BILINEAR of the crop), in 0-255
  levels; measured: mean 0.8, mean 99th percentile 7 (plain bilinear: 1.9 and 16)."""
  ours, plain = [], []
  for crop in _photo_crops(60):
    pillow = np.asarray(Image.fromarray(crop).resize((224, 224), Image.BILINEAR)).astype(int)
    ours.append(np.abs(resample.resize_crop(crop, (224, 224)).astype(int) - pillow))
    plain.append(np.abs(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR) - pillow))
  mean, p99 = np.mean([d.mean() for d in ours]), np.mean([np.percentile(d, 99) for d in ours])
  assert mean < 1.2 and p99 < 10, (mean, p99)
  # The antialiasing matters: without it the same crops differ much more.
  assert np.mean([d.mean() for d in plain]) > 1.5 * mean
  # Growing crops are plain bilinear, as in Pillow: equal up to rounding.
  small = next(crop for crop in _photo_crops(60) if max(crop.shape[:2]) < 224)
  pillow = np.asarray(Image.fromarray(small).resize((224, 224), Image.BILINEAR)).astype(int)
  assert np.abs(resample.resize_crop(small, (224, 224)) - pillow).max() <= 1


def test_grey_and_non_jpeg_images_crop_too():
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)).save(
      buffer, format="PNG")
  config = crops.HostCropConfig(size=(16, 16))
  for image, channels, shape in ((_jpeg(), 1, (2, 16, 16, 1)), (buffer.getvalue(), None,
                                                                (2, 16, 16, 3))):
    views, _ = crops.crop_views(image, np.random.default_rng(0), config, channels)
    assert views.shape == shape and views.dtype == np.uint8
  # A cut of a constant-colour image keeps the colour (RGB order, not OpenCV's BGR).
  buffer = io.BytesIO()
  Image.new("RGB", (300, 200), (200, 30, 90)).save(buffer, format="JPEG", quality=95)
  views, _ = crops.crop_views(buffer.getvalue(), np.random.default_rng(0), config)
  np.testing.assert_allclose(views.reshape(-1, 3).mean(0), (200, 30, 90), atol=3)


def test_host_cropped_uint8_batches_reach_the_device_and_get_the_rest_on_device():
  source = [{"image": _jpeg(seed=i), "label": i % 2} for i in range(4)]
  config = crops.HostCropConfig(size=(24, 24))
  iterator = pipeline.make_iterator(source, global_batch_size=4, seed=0, channels=3,
                                    host_crop=config, process_index=0, process_count=1)
  batches = iterators.DevicePrefetch(iterator, jax.device_put)
  batch = next(batches)
  assert batch["image"].shape == (4, 2, 24, 24, 3) and batch["image"].dtype == np.uint8
  assert isinstance(batch["image"], jax.Array)
  # On device every view gets the recipe but the crop (all strengths 0 here: the identity).
  recipe = aug.SimCLRAugmentConfig(crop_size=24, flip_prob=0, jitter_prob=0, grayscale_prob=0,
                                   blur_prob=0, mean=(0.0,), std=(1.0,))
  views = aug.two_views(jax.random.key(0), batch["image"], recipe)
  for v, view in enumerate(views):
    assert view.shape == (4, 24, 24, 3) and view.dtype == np.float32
    np.testing.assert_allclose(view, np.asarray(batch["image"][:, v]) / 255.0, atol=1e-6)
  # Crops depend on (seed, epoch, index): the same example differs across epochs.
  by_index = {}
  for _ in range(2):
    b = next(batches)
    for row, index in enumerate(np.asarray(b["index"])):
      by_index.setdefault(int(index), []).append(np.asarray(b["image"][row]))
  assert any(len(v) == 2 and not np.array_equal(v[0], v[1]) for v in by_index.values())


# ----------------------------------------------------------------------------- recipes


def _recipe_table(path: pathlib.Path) -> dict:
  """The ``| field | value |`` rows of a config file's docstring."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows = re.findall(r"^\s*\|\s*(\w+)\s*\|\s*([^|]+?)\s*\|", module.__doc__, re.M)
  table = {name: eval(value) for name, value in rows if name != "field"}  # noqa: S307
  return module, table


@pytest.mark.parametrize("name", ["imagenet100_sogclr_glofnd", "cifar10_sogclr_glofnd"])
def test_recipes_use_the_authors_augmentation_parameters(name):
  module, table = _recipe_table(ROOT / "configs" / f"{name}.py")
  assert len(table) >= 10
  recipe = unimodal_config.augment_config(module.get_config())
  for field, value in table.items():
    got = getattr(recipe, field)
    assert got == pytest.approx(value), f"{name}: {field} is {got}, the authors' {value}"
