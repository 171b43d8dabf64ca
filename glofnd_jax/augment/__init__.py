"""Contrastive-learning augmentations as batched, jittable JAX ops with explicit PRNG keys.

Two recipes, each a frozen (hashable) config dataclass, so a config can be a static argument of
``jax.jit``:

* :class:`SimCLRAugmentConfig`: the SimCLR / MoCo v2 / SogCLR set: random resized crop,
  horizontal flip, colour jitter (brightness, contrast, saturation, hue; with probability, in a
  random order per example), random grayscale, Gaussian blur, solarize, normalisation. The crop
  may instead be cut on the host (:mod:`glofnd_jax.data.crops`): :func:`two_views` then takes
  ``(B, 2, h, w, C)`` uint8 views and applies the rest.
* :class:`DigitsAugmentConfig`: for 8x8 grayscale digits: small random rotation, scale and shift
  (a shift is a crop of a zero-padded image), a smooth random displacement field (elastic-ish),
  intensity scaling, Gaussian noise, normalisation. No flip: a mirrored digit is another symbol.

Images come in as ``(B, H, W, C)`` uint8 (``0..255``) or floats in ``[0, 1]``; views leave as
float32 ``(B, h, w, C)``, normalised by the config's mean and std. Every random choice is drawn
per example from the key given; shapes depend only on the input shape and the config, so
:func:`two_views` compiles once.

* :mod:`~glofnd_jax.augment.ops`      the batched ops (crop, flip, jitter, grey, blur, affine).
* :mod:`~glofnd_jax.augment.recipes`  the recipes and the views a train step takes.
"""

from glofnd_jax.augment.ops import (
    blur_kernel_size,
    color_jitter,
    crop_and_resize,
    crop_boxes,
    gaussian_blur,
    hsv_to_rgb,
    normalize,
    random_affine_elastic,
    random_flip,
    random_grayscale,
    random_resized_crop,
    random_solarize,
    rgb_to_grayscale,
    rgb_to_hsv,
    to_float,
)
from glofnd_jax.augment.recipes import (
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    DigitsAugmentConfig,
    SimCLRAugmentConfig,
    augment,
    digits_view,
    eval_view,
    simclr_view,
    two_views,
)
