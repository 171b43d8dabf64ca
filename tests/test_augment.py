"""Augmentations: shapes/dtypes, determinism per key, randomness across keys, ranges, identity."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import augment as aug

two_views = jax.jit(aug.two_views, static_argnums=2)

SIMCLR = aug.SimCLRAugmentConfig(crop_size=12, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
SIMCLR_ZERO = aug.SimCLRAugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0,
                                      jitter_prob=0, grayscale_prob=0, blur_prob=0, mean=(0.0,),
                                      std=(1.0,))
DIGITS = aug.DigitsAugmentConfig()
DIGITS_ZERO = aug.DigitsAugmentConfig(max_rotation=0, scale=(1, 1), max_shift=0, elastic_alpha=0,
                                      intensity=0, noise_std=0, mean=(0.0,), std=(1.0,))


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


@pytest.mark.parametrize("config, shape, out_hw", [
    (SIMCLR, (6, 16, 20, 3), (12, 12)),
    (DIGITS, (6, 8, 8, 1), (8, 8)),
])
def test_two_views_shapes_determinism_randomness_range(config, shape, out_hw):
  images = _images(shape)
  v1, v2 = two_views(jax.random.key(0), images, config)
  assert v1.shape == v2.shape == (shape[0],) + out_hw + (shape[-1],)
  assert v1.dtype == v2.dtype == jnp.float32
  again1, again2 = two_views(jax.random.key(0), images, config)
  np.testing.assert_array_equal(v1, again1)
  np.testing.assert_array_equal(v2, again2)
  other1, _ = two_views(jax.random.key(1), images, config)
  assert not np.allclose(v1, other1)
  assert not np.allclose(v1, v2)
  # Values are normalised [0, 1] pixels.
  mean, std = np.asarray(config.mean), np.asarray(config.std)
  pixels = np.asarray(v1) * std + mean
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert np.isfinite(np.asarray(v1)).all()


@pytest.mark.parametrize("config, shape", [(SIMCLR_ZERO, (3, 10, 10, 3)),
                                           (DIGITS_ZERO, (3, 8, 8, 1))])
def test_zero_strength_is_identity(config, shape):
  images = _images(shape)
  v1, v2 = two_views(jax.random.key(3), images, config)
  np.testing.assert_allclose(v1, images / 255.0, atol=1e-6)
  np.testing.assert_allclose(v2, images / 255.0, atol=1e-6)
  np.testing.assert_allclose(aug.eval_view(images, config), images / 255.0, atol=1e-6)


def test_eval_view_center_crops_and_normalises():
  images = _images((2, 16, 16, 3))
  out = aug.eval_view(images, SIMCLR)
  expected = (images[:, 2:14, 2:14] / 255.0 - np.asarray(SIMCLR.mean)) / np.asarray(SIMCLR.std)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_crop_boxes_respect_scale_ratio_and_bounds():
  boxes = np.asarray(aug.crop_boxes(jax.random.key(0), 2000, 40, 60, (0.2, 0.6), (0.5, 2.0)))
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + height <= 40).all() and (left + width <= 60).all()
  area = height * width / (40 * 60)
  assert area.min() > 0.18 and area.max() < 0.62  # rounding to whole pixels
  ratio = width / height
  assert ratio.min() > 0.45 and ratio.max() < 2.2
  assert np.unique(top).size > 10 and np.unique(left).size > 10


def test_crop_and_resize_extracts_the_box():
  images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  boxes = jnp.array([[1.0, 2.0, 3.0, 3.0], [0.0, 0.0, 6.0, 6.0]])
  out = aug.crop_and_resize(images, boxes, (3, 3))
  np.testing.assert_allclose(out[0], images[0, 1:4, 2:5], atol=1e-4)
  assert out.shape == (2, 3, 3, 1)


def test_flip_grayscale_and_hsv():
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 5, 6, 3)), jnp.float32)
  np.testing.assert_array_equal(aug.random_flip(jax.random.key(0), images, 1.0),
                                images[:, :, ::-1])
  gray = aug.random_grayscale(jax.random.key(0), images, 1.0)
  np.testing.assert_allclose(gray[..., 0], gray[..., 2])
  np.testing.assert_allclose(gray[..., 0], images @ jnp.array([0.299, 0.587, 0.114]), rtol=1e-5)
  rgb = images.reshape(-1, 3)
  hsv = aug.rgb_to_hsv(rgb)
  for i in range(0, rgb.shape[0], 13):
    np.testing.assert_allclose(hsv[i], colorsys.rgb_to_hsv(*map(float, rgb[i])), atol=1e-5)
  np.testing.assert_allclose(aug.hsv_to_rgb(hsv), rgb, atol=1e-5)


def test_color_jitter_and_blur_change_images_only_when_applied():
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 9, 9, 3)), jnp.float32)
  jitter = jax.jit(aug.color_jitter, static_argnames=(
      "brightness", "contrast", "saturation", "hue", "prob", "random_order"))
  jittered = jitter(jax.random.key(0), images, brightness=0.4, contrast=0.4, saturation=0.4,
                    hue=0.1, prob=1.0)
  changed = np.abs(np.asarray(jittered - images)).reshape(8, -1).max(1) > 1e-3
  assert changed.all()
  skipped = aug.color_jitter(jax.random.key(0), images, brightness=0.4, contrast=0.4,
                             saturation=0.4, hue=0.1, prob=0.0)
  np.testing.assert_array_equal(skipped, images)
  blurred = aug.gaussian_blur(jax.random.key(0), images, prob=1.0, sigma=(1.0, 2.0),
                              kernel_size=5)
  assert float(jnp.var(blurred)) < float(jnp.var(images))  # smoothing lowers pixel variance
  np.testing.assert_allclose(blurred.mean(), images.mean(), atol=0.02)
  assert aug.blur_kernel_size(224, 0.1) == 23 and aug.blur_kernel_size(32, 0.1) == 3


def test_digits_view_never_flips_and_keeps_mass_centred():
  # A left-heavy digit stays left-heavy: no horizontal flip in the digits recipe.
  images = np.zeros((64, 8, 8, 1), np.uint8)
  images[:, 1:7, 1:3] = 255
  views = aug.augment(jax.random.key(0), jnp.asarray(images),
                      aug.DigitsAugmentConfig(noise_std=0, mean=(0.0,), std=(1.0,)))
  left, right = views[:, :, :4].sum((1, 2, 3)), views[:, :, 4:].sum((1, 2, 3))
  assert bool((left > right).all())


def test_configs_validate_and_accept_lists():
  config = aug.SimCLRAugmentConfig(crop_scale=[0.2, 1.0], mean=[0.5], std=[0.5])
  assert config.crop_scale == (0.2, 1.0)
  hash(config)  # static jit argument
  with pytest.raises(ValueError, match="crop_scale"):
    aug.SimCLRAugmentConfig(crop_scale=(0.5, 0.1))
  with pytest.raises(ValueError, match="hue"):
    aug.SimCLRAugmentConfig(hue=0.7)
  with pytest.raises(ValueError, match="channel values"):
    aug.augment(jax.random.key(0), _images((1, 8, 8, 1)), aug.SimCLRAugmentConfig())
