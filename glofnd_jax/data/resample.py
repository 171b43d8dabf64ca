"""Antialiased bilinear resizing of a crop with OpenCV, matching Pillow's ``BILINEAR`` resize.

torchvision's ``RandomResizedCrop`` on a PIL image crops, then calls Pillow's bilinear
``resize``, which antialiases when it shrinks: each output pixel averages the input under a
triangle of half-width ``s`` input pixels (``s`` = input / output size on that axis, at least 1).
Pillow does this in scalar C, about 0.5 ms per 224 px view; OpenCV's SIMD ``resize`` is 3-5x
faster but its ``INTER_LINEAR`` does not antialias (2 taps whatever ``s``). The rule here: on
each axis that shrinks, a Gaussian blur whose variance, added to bilinear interpolation's own
(``1/6``), equals the triangle's (``s**2 / 6``), i.e. ``sigma**2 = (s**2 - 1) / 6``, then
``INTER_LINEAR`` (same pixel-centre convention as Pillow). Growing axes are plain bilinear, as in
Pillow. Measured against Pillow on random resized crops of photos: mean absolute difference
about 0.8 of 255 levels (plain ``INTER_LINEAR``: 1.9), see ``tests/test_input_pipeline.py``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def shrink_sigma(scale: float) -> float:
  """Blur sigma (input pixels) before bilinear sampling when an axis shrinks by ``scale``."""
  return math.sqrt((scale * scale - 1.0) / 6.0) if scale > 1.0 else 0.0


def _kernel_size(sigma: float) -> int:
  return 2 * math.ceil(3.0 * sigma) + 1 if sigma > 0 else 1


def resize_crop(crop: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None
                ) -> np.ndarray:
  """``crop`` (uint8 ``(h, w)`` or ``(h, w, C)``, any strides) resized to ``size = (height,
  width)`` with antialiasing as Pillow's bilinear; written into ``out`` when given."""
  height, width = size
  sigma_x = shrink_sigma(crop.shape[1] / width)
  sigma_y = shrink_sigma(crop.shape[0] / height)
  if sigma_x or sigma_y:
    # sigmaY=0 would mean "same as sigmaX" to OpenCV; a 1-tap kernel leaves that axis alone.
    crop = cv2.GaussianBlur(crop, (_kernel_size(sigma_x), _kernel_size(sigma_y)),
                            sigmaX=sigma_x or 1.0, sigmaY=sigma_y or 1.0)
  resized = cv2.resize(crop, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
  return resized
