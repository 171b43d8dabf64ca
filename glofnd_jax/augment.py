"""Contrastive-learning augmentations as batched, jittable JAX ops with explicit PRNG keys.

Two recipes, each a frozen (hashable) config dataclass, so a config can be a static argument of
``jax.jit``:

* :class:`SimCLRAugmentConfig`: the SimCLR / MoCo v2 / SogCLR set: random resized crop,
  horizontal flip, colour jitter (brightness, contrast, saturation, hue; with probability, in a
  random order per example), random grayscale, Gaussian blur, normalisation.
* :class:`DigitsAugmentConfig`: for 8x8 grayscale digits: small random rotation, scale and shift
  (a shift is a crop of a zero-padded image), a smooth random displacement field (elastic-ish),
  intensity scaling, Gaussian noise, normalisation. No flip: a mirrored digit is another symbol.

Images come in as ``(B, H, W, C)`` uint8 (``0..255``) or floats in ``[0, 1]``; views leave as
float32 ``(B, h, w, C)``, normalised by the config's mean and std. Every random choice is drawn
per example from the key given; shapes depend only on the input shape and the config, so
:func:`two_views` compiles once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# sklearn digits scaled to [0, 1]: mean 0.305, std 0.376.
DIGITS_MEAN = (0.305,)
DIGITS_STD = (0.376,)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision


def _as_tuple(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class SimCLRAugmentConfig:
  """Strengths of the SimCLR augmentations (defaults: MoCo v2 / SogCLR ImageNet recipe).

  Attributes:
    crop_size: output ``(height, width)`` (an int means square); None keeps the input size.
    crop_scale: range of the crop's area as a fraction of the image's.
    crop_ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
    flip_prob: probability of a horizontal flip.
    jitter_prob: probability of applying colour jitter to an example.
    brightness, contrast, saturation: jitter factors are drawn from ``[max(0, 1 - s), 1 + s]``.
    hue: hue shift drawn from ``[-hue, hue]`` (fraction of the colour wheel, <= 0.5).
    jitter_random_order: apply the four jitter ops in a random order per example (torchvision);
      False: brightness, contrast, saturation, hue.
    grayscale_prob: probability of converting to grayscale (kept as C channels).
    blur_prob: probability of a Gaussian blur (SimCLR: 0.5 on ImageNet, 0 on CIFAR).
    blur_sigma: range of the blur's standard deviation, in pixels.
    blur_kernel_fraction: blur kernel size as a fraction of the output size (rounded to odd, at
      least 3).
    mean, std: per-channel normalisation (one value broadcasts to every channel).
  """

  crop_size: Union[int, tuple[int, int], None] = None
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  jitter_random_order: bool = True
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD

  def __post_init__(self):
    # Configs may arrive with lists (ml_collections, JSON): tuples keep the dataclass hashable.
    for field in dataclasses.fields(self):
      object.__setattr__(self, field.name, _as_tuple(getattr(self, field.name)))
    if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
      raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < lo <= hi <= 1.")
    if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ValueError(f"crop_ratio={self.crop_ratio} must satisfy 0 < lo <= hi.")
    if not 0 <= self.hue <= 0.5:
      raise ValueError(f"hue={self.hue} must lie in [0, 0.5].")
    for name in ("brightness", "contrast", "saturation"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
    for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1].")
    _check_mean_std(self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class DigitsAugmentConfig:
  """Strengths of the digit augmentations (8x8 grayscale; sizes in pixels of the input).

  Attributes:
    max_rotation: rotation angle drawn from ``[-max_rotation, max_rotation]`` degrees.
    scale: zoom factor range (> 1 enlarges the digit).
    max_shift: shift drawn from ``[-max_shift, max_shift]`` per axis; the border is zero (a
      crop of a zero-padded image, at sub-pixel offsets).
    elastic_alpha: standard deviation of a smooth random displacement field.
    elastic_grid: the field is Gaussian noise on a ``grid x grid`` lattice, bilinearly upsampled.
    intensity: pixel values are multiplied by a factor from ``[1 - intensity, 1 + intensity]``.
    noise_std: standard deviation of additive Gaussian noise (images in ``[0, 1]``).
    mean, std: normalisation.
  """

  max_rotation: float = 15.0
  scale: tuple[float, float] = (0.85, 1.15)
  max_shift: float = 1.0
  elastic_alpha: float = 0.4
  elastic_grid: int = 3
  intensity: float = 0.2
  noise_std: float = 0.05
  mean: tuple[float, ...] = DIGITS_MEAN
  std: tuple[float, ...] = DIGITS_STD

  def __post_init__(self):
    for field in dataclasses.fields(self):
      object.__setattr__(self, field.name, _as_tuple(getattr(self, field.name)))
    if not 0 < self.scale[0] <= self.scale[1]:
      raise ValueError(f"scale={self.scale} must satisfy 0 < lo <= hi.")
    for name in ("max_rotation", "max_shift", "elastic_alpha", "intensity", "noise_std"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
    if self.elastic_grid < 2:
      raise ValueError(f"elastic_grid={self.elastic_grid} must be >= 2.")
    _check_mean_std(self.mean, self.std)


AugmentConfig = Union[SimCLRAugmentConfig, DigitsAugmentConfig]


def _check_mean_std(mean, std):
  if len(mean) != len(std) or not mean:
    raise ValueError(f"mean {mean} and std {std} must be non-empty and of equal length.")
  if min(std) <= 0:
    raise ValueError(f"std {std} must be positive.")


# ----------------------------------------------------------------------------- basic ops


def to_float(images: jax.Array) -> jax.Array:
  """uint8 ``0..255`` -> float32 ``[0, 1]``; float inputs are taken as already in ``[0, 1]``."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """``(images - mean) / std`` per channel; images float ``(..., C)``."""
  channels = images.shape[-1]
  if len(mean) not in (1, channels):
    raise ValueError(f"normalisation has {len(mean)} channel values for {channels}-channel "
                     "images: set the augmentation config's mean/std.")
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def rgb_to_grayscale(images: jax.Array) -> jax.Array:
  """Luma of float ``(..., 3)`` images as ``(..., 1)``; 1-channel images are returned as is."""
  if images.shape[-1] == 1:
    return images
  return jnp.tensordot(images, jnp.asarray(_LUMA, images.dtype), axes=[[-1], [0]])[..., None]


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """float ``(..., 3)`` RGB in ``[0, 1]`` -> HSV in ``[0, 1]`` (hue as a fraction of the wheel)."""
  red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  delta = value - jnp.min(rgb, axis=-1)
  saturation = jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0)
  safe_delta = jnp.where(delta > 0, delta, 1.0)  # grey pixels: hue 0, no division by zero
  red_c, green_c, blue_c = ((value - c) / safe_delta for c in (red, green, blue))
  hue = jnp.where(red == value, blue_c - green_c,
                  jnp.where(green == value, 2.0 + red_c - blue_c, 4.0 + green_c - red_c))
  hue = jnp.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """Inverse of :func:`rgb_to_hsv`."""
  hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.floor(hue * 6.0)
  frac = hue * 6.0 - sector
  sector = sector.astype(jnp.int32) % 6
  p = value * (1.0 - saturation)
  q = value * (1.0 - saturation * frac)
  t = value * (1.0 - saturation * (1.0 - frac))
  pick = lambda *options: jnp.select([sector == k for k in range(6)], options)
  return jnp.stack([pick(value, q, p, p, t, value), pick(t, value, value, q, p, p),
                    pick(p, p, t, value, value, q)], axis=-1)


def _bernoulli(rng: jax.Array, prob: float, batch: int) -> jax.Array:
  return jax.random.uniform(rng, (batch,)) < prob


def _per_example(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
  """Select ``new`` where the ``(B,)`` mask is True, per example."""
  return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


# ----------------------------------------------------------------------------- SimCLR ops


def crop_boxes(rng: jax.Array, batch: int, height: int, width: int,
               scale: tuple[float, float], ratio: tuple[float, float],
               tries: int = 10) -> jax.Array:
  """Random-resized-crop boxes, torchvision's rule, vectorised.

  Draws ``tries`` (area fraction, log aspect ratio) candidates per example and keeps the first
  that fits the image; if none does, falls back to the centre crop with the ratio clamped to
  ``ratio``. The offset is uniform over the valid integer positions.

  Returns:
    float32 ``(B, 4)``: ``(top, left, crop_height, crop_width)`` in pixels (integer-valued).
  """
  area_key, ratio_key, top_key, left_key = jax.random.split(rng, 4)
  area = height * width * jax.random.uniform(area_key, (batch, tries), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (batch, tries), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  crop_w = jnp.round(jnp.sqrt(area * aspect))
  crop_h = jnp.round(jnp.sqrt(area / aspect))
  fits = (crop_w >= 1) & (crop_h >= 1) & (crop_w <= width) & (crop_h <= height)
  first = jnp.argmax(fits, axis=1)[:, None]
  crop_w = jnp.take_along_axis(crop_w, first, axis=1)[:, 0]
  crop_h = jnp.take_along_axis(crop_h, first, axis=1)[:, 0]
  # Fallback (static, depends only on shapes): centre crop at the nearest allowed ratio.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_w, fallback_h = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    fallback_w, fallback_h = round(height * ratio[1]), height
  else:
    fallback_w, fallback_h = width, height
  found = fits.any(axis=1)
  crop_w = jnp.where(found, crop_w, float(fallback_w))
  crop_h = jnp.where(found, crop_h, float(fallback_h))
  top = jnp.floor(jax.random.uniform(top_key, (batch,)) * (height - crop_h + 1))
  left = jnp.floor(jax.random.uniform(left_key, (batch,)) * (width - crop_w + 1))
  top = jnp.where(found, top, jnp.floor((height - crop_h) / 2))
  left = jnp.where(found, left, jnp.floor((width - crop_w) / 2))
  return jnp.stack([top, left, crop_h, crop_w], axis=1).astype(jnp.float32)


def crop_and_resize(images: jax.Array, boxes: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Crops each image to its box and resizes it to ``size`` (bilinear, antialiased).

  Args:
    images: float ``(B, H, W, C)``.
    boxes: ``(B, 4)`` ``(top, left, height, width)`` in pixels.
    size: output ``(h, w)``.

  Returns:
    float32 ``(B, h, w, C)``. A box covering the whole image at the input size is the identity.
  """
  out_h, out_w = size

  def one(image, box):
    top, left, crop_h, crop_w = box[0], box[1], box[2], box[3]
    scale = jnp.stack([out_h / crop_h, out_w / crop_w])
    translation = -jnp.stack([top, left]) * scale
    return jax.image.scale_and_translate(image, (out_h, out_w, image.shape[-1]), (0, 1), scale,
                                         translation, method="linear", antialias=True)

  return jax.vmap(one)(images, boxes)


def random_resized_crop(rng: jax.Array, images: jax.Array, size: tuple[int, int],
                        scale: tuple[float, float], ratio: tuple[float, float]) -> jax.Array:
  """SimCLR's random resized crop: float ``(B, H, W, C)`` -> ``(B, size[0], size[1], C)``."""
  batch, height, width, _ = images.shape
  return crop_and_resize(images, crop_boxes(rng, batch, height, width, scale, ratio), size)


def random_flip(rng: jax.Array, images: jax.Array, prob: float) -> jax.Array:
  """Mirrors each ``(B, H, W, C)`` image left-right with probability ``prob``."""
  return _per_example(_bernoulli(rng, prob, images.shape[0]), images[:, :, ::-1], images)


def _adjust_brightness(image, factor):
  return jnp.clip(image * factor, 0.0, 1.0)


def _adjust_contrast(image, factor):
  mean = jnp.mean(rgb_to_grayscale(image))
  return jnp.clip(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def _adjust_saturation(image, factor):
  return jnp.clip(factor * image + (1.0 - factor) * rgb_to_grayscale(image), 0.0, 1.0)


def _adjust_hue(image, shift):
  hsv = rgb_to_hsv(image)
  return hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0))


def color_jitter(rng: jax.Array, images: jax.Array, *, brightness: float, contrast: float,
                 saturation: float, hue: float, prob: float,
                 random_order: bool = True) -> jax.Array:
  """torchvision's ``RandomApply([ColorJitter(...)], p=prob)`` on float ``(B, H, W, C)``.

  Ops with strength 0 are left out (exactly the identity); saturation and hue are left out for
  1-channel images. With ``random_order`` each example applies the remaining ops in its own
  random order.
  """
  batch, channels = images.shape[0], images.shape[-1]
  ops: list[tuple[Callable, float, float]] = []  # (op, low, high) of the factor's range
  if brightness > 0:
    ops.append((_adjust_brightness, max(0.0, 1.0 - brightness), 1.0 + brightness))
  if contrast > 0:
    ops.append((_adjust_contrast, max(0.0, 1.0 - contrast), 1.0 + contrast))
  if channels == 3 and saturation > 0:
    ops.append((_adjust_saturation, max(0.0, 1.0 - saturation), 1.0 + saturation))
  if channels == 3 and hue > 0:
    ops.append((_adjust_hue, -hue, hue))
  if not ops or prob <= 0:
    return images
  apply_key, factor_key, order_key = jax.random.split(rng, 3)
  low = jnp.asarray([op[1] for op in ops], jnp.float32)
  high = jnp.asarray([op[2] for op in ops], jnp.float32)
  factors = jax.random.uniform(factor_key, (batch, len(ops)), minval=low, maxval=high)
  if random_order:
    orders = jax.vmap(lambda k: jax.random.permutation(k, len(ops)))(
        jax.random.split(order_key, batch))
  else:
    orders = jnp.broadcast_to(jnp.arange(len(ops)), (batch, len(ops)))
  branches = [lambda image, f, op=op: op(image, f) for op, _, _ in ops]

  def one(image, factor, order):
    for stage in range(len(ops)):
      which = order[stage]
      image = jax.lax.switch(which, branches, image, factor[which])
    return image

  jittered = jax.vmap(one)(images, factors, orders)
  return _per_example(_bernoulli(apply_key, prob, batch), jittered, images)


def random_grayscale(rng: jax.Array, images: jax.Array, prob: float) -> jax.Array:
  """With probability ``prob``, replaces an RGB image by its luma on every channel."""
  if images.shape[-1] == 1 or prob <= 0:
    return images
  gray = jnp.broadcast_to(rgb_to_grayscale(images), images.shape)
  return _per_example(_bernoulli(rng, prob, images.shape[0]), gray, images)


def blur_kernel_size(size: int, fraction: float) -> int:
  """Odd kernel size ``~ fraction * size``, at least 3 (SimCLR: 10% of the image side)."""
  k = max(3, int(fraction * size))
  return k if k % 2 else k + 1


def gaussian_blur(rng: jax.Array, images: jax.Array, *, prob: float,
                  sigma: tuple[float, float], kernel_size: int) -> jax.Array:
  """With probability ``prob``, a separable Gaussian blur with sigma from ``sigma`` per example.

  Args:
    images: float ``(B, H, W, C)``.
    kernel_size: odd, static; borders are reflected.
  """
  if prob <= 0:
    return images
  batch, height, width, _ = images.shape
  apply_key, sigma_key = jax.random.split(rng)
  radius = kernel_size // 2
  sigmas = jax.random.uniform(sigma_key, (batch, 1), minval=sigma[0], maxval=sigma[1])
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (taps / sigmas) ** 2)
  weights = weights / weights.sum(axis=1, keepdims=True)  # (B, K)

  def blur_axis(x, axis, length):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    x_pad = jnp.pad(x, pad, mode="reflect" if length > radius else "edge")
    out = 0.0
    for k in range(kernel_size):
      window = jax.lax.slice_in_dim(x_pad, k, k + length, axis=axis)
      out = out + weights[:, k, None, None, None] * window
    return out

  blurred = blur_axis(blur_axis(images, 1, height), 2, width)
  return _per_example(_bernoulli(apply_key, prob, batch), blurred, images)


def _output_size(config: SimCLRAugmentConfig, height: int, width: int) -> tuple[int, int]:
  if config.crop_size is None:
    return height, width
  if isinstance(config.crop_size, int):
    return config.crop_size, config.crop_size
  return tuple(config.crop_size)


def simclr_view(rng: jax.Array, images: jax.Array, config: SimCLRAugmentConfig) -> jax.Array:
  """One SimCLR view: ``(B, H, W, C)`` uint8/float -> float32 ``(B, h, w, C)`` normalised."""
  images = to_float(images)
  _, height, width, _ = images.shape
  size = _output_size(config, height, width)
  crop_key, flip_key, jitter_key, gray_key, blur_key = jax.random.split(rng, 5)
  x = random_resized_crop(crop_key, images, size, config.crop_scale, config.crop_ratio)
  x = random_flip(flip_key, x, config.flip_prob)
  x = color_jitter(jitter_key, x, brightness=config.brightness, contrast=config.contrast,
                   saturation=config.saturation, hue=config.hue, prob=config.jitter_prob,
                   random_order=config.jitter_random_order)
  x = random_grayscale(gray_key, x, config.grayscale_prob)
  x = gaussian_blur(blur_key, x, prob=config.blur_prob, sigma=config.blur_sigma,
                    kernel_size=blur_kernel_size(min(size), config.blur_kernel_fraction))
  return normalize(jnp.clip(x, 0.0, 1.0), config.mean, config.std)


# ----------------------------------------------------------------------------- digits ops


def random_affine_elastic(rng: jax.Array, images: jax.Array, *, max_rotation: float,
                          scale: tuple[float, float], max_shift: float, elastic_alpha: float,
                          elastic_grid: int) -> jax.Array:
  """Random rotation, zoom, shift and smooth displacement per example (bilinear, zero border).

  Args:
    images: float ``(B, H, W, C)``.

  Returns:
    float32 ``(B, H, W, C)``; the identity when every strength is 0 and ``scale == (1, 1)``.
  """
  batch, height, width, channels = images.shape
  angle_key, scale_key, shift_key, field_key = jax.random.split(rng, 4)
  angle = jnp.deg2rad(jax.random.uniform(angle_key, (batch, 1, 1), minval=-max_rotation,
                                         maxval=max_rotation))
  zoom = jax.random.uniform(scale_key, (batch, 1, 1), minval=scale[0], maxval=scale[1])
  shift = jax.random.uniform(shift_key, (batch, 2, 1, 1), minval=-max_shift, maxval=max_shift)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  center_r, center_c = (height - 1) / 2.0, (width - 1) / 2.0
  # Output pixel -> input coordinate: undo the shift, the rotation and the zoom about the centre.
  dr = rows - center_r - shift[:, 0]
  dc = cols - center_c - shift[:, 1]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_r = (cos * dr + sin * dc) / zoom + center_r
  src_c = (-sin * dr + cos * dc) / zoom + center_c
  if elastic_alpha > 0:
    coarse = elastic_alpha * jax.random.normal(field_key, (batch, elastic_grid, elastic_grid, 2))
    field = jax.image.resize(coarse, (batch, height, width, 2), method="linear")
    src_r, src_c = src_r + field[..., 0], src_c + field[..., 1]

  def sample(channel, coord_r, coord_c):
    return jax.scipy.ndimage.map_coordinates(channel, [coord_r, coord_c], order=1,
                                             mode="constant", cval=0.0)

  per_channel = jax.vmap(sample, in_axes=(2, None, None), out_axes=2)  # over C
  return jax.vmap(per_channel)(images, src_r, src_c)


def digits_view(rng: jax.Array, images: jax.Array, config: DigitsAugmentConfig) -> jax.Array:
  """One digits view: ``(B, H, W, C)`` uint8/float -> float32 ``(B, H, W, C)`` normalised."""
  images = to_float(images)
  batch = images.shape[0]
  warp_key, intensity_key, noise_key = jax.random.split(rng, 3)
  x = random_affine_elastic(warp_key, images, max_rotation=config.max_rotation,
                            scale=config.scale, max_shift=config.max_shift,
                            elastic_alpha=config.elastic_alpha, elastic_grid=config.elastic_grid)
  if config.intensity > 0:
    factor = jax.random.uniform(intensity_key, (batch, 1, 1, 1), minval=1.0 - config.intensity,
                                maxval=1.0 + config.intensity)
    x = x * factor
  if config.noise_std > 0:
    x = x + config.noise_std * jax.random.normal(noise_key, x.shape)
  return normalize(jnp.clip(x, 0.0, 1.0), config.mean, config.std)


# ----------------------------------------------------------------------------- entry points


def augment(rng: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
  """One random view of a batch: ``(B, H, W, C)`` -> float32 ``(B, h, w, C)``."""
  if len(config.mean) not in (1, images.shape[-1]):  # fail before tracing the whole recipe
    normalize(images, config.mean, config.std)
  if isinstance(config, SimCLRAugmentConfig):
    return simclr_view(rng, images, config)
  if isinstance(config, DigitsAugmentConfig):
    return digits_view(rng, images, config)
  raise TypeError(f"unknown augmentation config {type(config).__name__}.")


def two_views(rng: jax.Array, images: jax.Array,
              config: AugmentConfig) -> tuple[jax.Array, jax.Array]:
  """Two independent views of each image (the contrastive pair).

  Args:
    rng: PRNG key; the views use two keys split from it.
    images: ``(B, H, W, C)`` uint8 or float in ``[0, 1]``.
    config: a :class:`SimCLRAugmentConfig` or :class:`DigitsAugmentConfig` (static under jit:
      ``jax.jit(two_views, static_argnums=2)``).

  Returns:
    ``(view1, view2)``, each float32 ``(B, h, w, C)``, normalised.
  """
  key1, key2 = jax.random.split(rng)
  return augment(key1, images, config), augment(key2, images, config)


def eval_view(images: jax.Array, config: AugmentConfig) -> jax.Array:
  """The deterministic view for evaluation (kNN, linear probe, detection quality).

  Centre crop to the config's ``crop_size`` (resizing instead when the input is smaller), then
  the same normalisation as training views.

  Returns:
    float32 ``(B, h, w, C)``.
  """
  images = to_float(images)
  if isinstance(config, SimCLRAugmentConfig):
    batch, height, width, channels = images.shape
    out_h, out_w = _output_size(config, height, width)
    if (out_h, out_w) != (height, width):
      if out_h <= height and out_w <= width:
        top, left = (height - out_h) // 2, (width - out_w) // 2
        images = images[:, top:top + out_h, left:left + out_w]
      else:
        images = jax.image.resize(images, (batch, out_h, out_w, channels), method="linear")
  elif not isinstance(config, DigitsAugmentConfig):
    raise TypeError(f"unknown augmentation config {type(config).__name__}.")
  return normalize(images, config.mean, config.std)
