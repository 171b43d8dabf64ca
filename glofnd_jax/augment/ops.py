"""Batched, jittable image ops with explicit PRNG keys: the pieces every augmentation recipe uses.

Images are ``(B, H, W, C)`` floats in ``[0, 1]`` (:func:`to_float` converts uint8); each random
choice is drawn per example from the key given, so shapes depend only on the input shape.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision


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


def random_solarize(rng: jax.Array, images: jax.Array, prob: float,
                    threshold: float = 0.5) -> jax.Array:
  """With probability ``prob``, inverts the pixels at or above ``threshold`` (BYOL's solarize)."""
  if prob <= 0:
    return images
  solarized = jnp.where(images >= threshold, 1.0 - images, images)
  return _per_example(_bernoulli(rng, prob, images.shape[0]), solarized, images)


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
