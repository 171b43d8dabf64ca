"""The augmentation recipes (frozen, hashable configs, so they can be static ``jit`` arguments)
and the views a train step takes: :func:`augment`, :func:`two_views`, :func:`eval_view`.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp

from glofnd_jax.augment import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# sklearn digits scaled to [0, 1]: mean 0.305, std 0.376.
DIGITS_MEAN = (0.305,)
DIGITS_STD = (0.376,)


def _as_tuple(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class SimCLRAugmentConfig:
  """Strengths of the SimCLR augmentations (defaults: the SogCLR / GloFND ImageNet recipe).

  The authors' torchvision transform (GloFND ``unimodal/train.py``, SogCLR ``train.py``), per
  view: ``RandomResizedCrop(224, scale=(0.08, 1))``, ``RandomApply([ColorJitter(0.4, 0.4, 0.2,
  0.1)], p=0.8)``, ``RandomGrayscale(p=0.2)``, ``RandomApply([GaussianBlur([0.1, 2])], p=1.0)``,
  ``RandomHorizontalFlip()``, normalise. The flip is applied first here: it commutes with the
  pixel-wise colour ops and the symmetric blur kernel.

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
    blur_prob: probability of a Gaussian blur (SogCLR / GloFND: 1.0 on ImageNet, 0 on CIFAR).
    blur_sigma: range of the blur's standard deviation, in pixels.
    blur_kernel_fraction: blur kernel size as a fraction of the output size (rounded to odd, at
      least 3).
    solarize_prob: probability of solarizing (inverting pixels >= 0.5; BYOL's second view; 0 in
      the SogCLR / GloFND recipes).
    mean, std: per-channel normalisation (one value broadcasts to every channel).
  """

  crop_size: Union[int, tuple[int, int], None] = None
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.2
  hue: float = 0.1
  jitter_random_order: bool = True
  grayscale_prob: float = 0.2
  blur_prob: float = 1.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1
  solarize_prob: float = 0.0
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
    for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
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


def _output_size(config: SimCLRAugmentConfig, height: int, width: int) -> tuple[int, int]:
  if config.crop_size is None:
    return height, width
  if isinstance(config.crop_size, int):
    return config.crop_size, config.crop_size
  return tuple(config.crop_size)


def simclr_view(rng: jax.Array, images: jax.Array, config: SimCLRAugmentConfig,
                cropped: bool = False) -> jax.Array:
  """One SimCLR view: ``(B, H, W, C)`` uint8/float -> float32 ``(B, h, w, C)`` normalised.

  ``cropped``: the images are random resized crops already (cut on the host) at ``crop_size``;
  everything but the crop is applied.
  """
  images = ops.to_float(images)
  _, height, width, _ = images.shape
  size = _output_size(config, height, width)
  crop_key, flip_key, jitter_key, gray_key, blur_key = jax.random.split(rng, 5)
  if cropped:
    if (height, width) != size:
      raise ValueError(f"host-cropped views are {height}x{width} but config.augment.crop_size is "
                       f"{size}: cut them at the crop size.")
    x = images
  else:
    x = ops.random_resized_crop(crop_key, images, size, config.crop_scale, config.crop_ratio)
  x = ops.random_flip(flip_key, x, config.flip_prob)
  x = ops.color_jitter(jitter_key, x, brightness=config.brightness, contrast=config.contrast,
                       saturation=config.saturation, hue=config.hue, prob=config.jitter_prob,
                       random_order=config.jitter_random_order)
  x = ops.random_grayscale(gray_key, x, config.grayscale_prob)
  x = ops.gaussian_blur(blur_key, x, prob=config.blur_prob, sigma=config.blur_sigma,
                        kernel_size=ops.blur_kernel_size(min(size), config.blur_kernel_fraction))
  x = ops.random_solarize(jax.random.fold_in(rng, 5), x, config.solarize_prob)
  return ops.normalize(jnp.clip(x, 0.0, 1.0), config.mean, config.std)


def digits_view(rng: jax.Array, images: jax.Array, config: DigitsAugmentConfig) -> jax.Array:
  """One digits view: ``(B, H, W, C)`` uint8/float -> float32 ``(B, H, W, C)`` normalised."""
  images = ops.to_float(images)
  batch = images.shape[0]
  warp_key, intensity_key, noise_key = jax.random.split(rng, 3)
  x = ops.random_affine_elastic(warp_key, images, max_rotation=config.max_rotation,
                                scale=config.scale, max_shift=config.max_shift,
                                elastic_alpha=config.elastic_alpha,
                                elastic_grid=config.elastic_grid)
  if config.intensity > 0:
    factor = jax.random.uniform(intensity_key, (batch, 1, 1, 1), minval=1.0 - config.intensity,
                                maxval=1.0 + config.intensity)
    x = x * factor
  if config.noise_std > 0:
    x = x + config.noise_std * jax.random.normal(noise_key, x.shape)
  return ops.normalize(jnp.clip(x, 0.0, 1.0), config.mean, config.std)


def augment(rng: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
  """One random view of a batch: ``(B, H, W, C)`` -> float32 ``(B, h, w, C)``."""
  if len(config.mean) not in (1, images.shape[-1]):  # fail before tracing the whole recipe
    ops.normalize(images, config.mean, config.std)
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
    images: ``(B, H, W, C)`` uint8 or float in ``[0, 1]``; or ``(B, 2, h, w, C)``: two views per
      image already cut on the host (:mod:`glofnd_jax.data.crops`, SimCLR recipe only), which
      get everything but the crop.
    config: a :class:`SimCLRAugmentConfig` or :class:`DigitsAugmentConfig` (static under jit:
      ``jax.jit(two_views, static_argnums=2)``).

  Returns:
    ``(view1, view2)``, each float32 ``(B, h, w, C)``, normalised.
  """
  key1, key2 = jax.random.split(rng)
  if images.ndim == 5:
    if not isinstance(config, SimCLRAugmentConfig) or images.shape[1] != 2:
      raise ValueError(f"images of shape {images.shape} are host-cropped view pairs, which only "
                       "the SimCLR recipe takes (config.augment.kind='simclr').")
    return (simclr_view(key1, images[:, 0], config, cropped=True),
            simclr_view(key2, images[:, 1], config, cropped=True))
  return augment(key1, images, config), augment(key2, images, config)


def eval_view(images: jax.Array, config: AugmentConfig) -> jax.Array:
  """The deterministic view for evaluation (kNN, linear probe, detection quality).

  Centre crop to the config's ``crop_size`` (resizing instead when the input is smaller), then
  the same normalisation as training views.

  Returns:
    float32 ``(B, h, w, C)``.
  """
  images = ops.to_float(images)
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
  return ops.normalize(images, config.mean, config.std)
