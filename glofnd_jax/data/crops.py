"""Random resized crops on the host: both training views cut from one decode of the whole image.

The geometry is torchvision's ``RandomResizedCrop.get_params`` (area fraction uniform in
``scale``, log aspect ratio uniform in ``log(ratio)``, 10 tries, then a centre crop at the
nearest allowed ratio), sampled over the **original** image, so crops reach every border and
their scale is relative to the whole image (not to a pre-resized square).

Cost: a file is decoded once per example for both views, by OpenCV (libjpeg-turbo: the same
pixels as Pillow's decode, about 20% less CPU); when every view's box is at least twice the
output size in both directions a JPEG is decoded at 1/2, 1/4 or 1/8 size (libjpeg's DCT-domain
scaling, the pixels of Pillow's ``Image.draft``). Each view is then a slice of the decoded array
resized by :func:`~glofnd_jax.data.resample.resize_crop` (Pillow's antialiased bilinear,
approximated with OpenCV's SIMD blur + bilinear: within about 0.8 of 255 levels on average, 3x
less CPU). About 1.3-1.5 CPU-ms per 500x400 image for two 224 views (Pillow: 2.3). The views
leave as uint8; colour jitter, greyscale, blur, solarize and flips run batched on the
accelerator (:mod:`glofnd_jax.augment`).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

from glofnd_jax.data import resample
from glofnd_jax.data.decode import decode_image

TRIES = 10


@dataclasses.dataclass(frozen=True)
class HostCropConfig:
  """What the host cuts per training example.

  Attributes:
    size: output ``(height, width)`` of each view.
    scale: range of the crop's area as a fraction of the whole image's.
    ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
    views: views per example (2 for contrastive learning).
    draft: allow JPEG DCT-domain downscaling when every box is >= 2x the output size.
  """

  size: tuple[int, int] = (224, 224)
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  views: int = 2
  draft: bool = True

  def __post_init__(self):
    size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
    object.__setattr__(self, "size", size)
    object.__setattr__(self, "scale", tuple(self.scale))
    object.__setattr__(self, "ratio", tuple(self.ratio))
    if not 0 < self.scale[0] <= self.scale[1] <= 1:
      raise ValueError(f"crop scale={self.scale} must satisfy 0 < lo <= hi <= 1.")
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f"crop ratio={self.ratio} must satisfy 0 < lo <= hi.")
    if min(size) < 1 or self.views < 1:
      raise ValueError(f"crop size={size} and views={self.views} must be positive.")


def sample_boxes(rng: np.random.Generator, height: int, width: int, count: int,
                 scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
  """``count`` random-resized-crop boxes over a ``height x width`` image, torchvision's rule.

  All ``TRIES`` candidates of every box are drawn at once and the first that fits is kept (the
  same distribution as drawing them one by one).

  Returns:
    int64 ``(count, 4)``: ``(top, left, crop_height, crop_width)``.
  """
  area = height * width * rng.uniform(scale[0], scale[1], (count, TRIES))
  aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (count, TRIES)))
  crop_w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
  crop_h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
  fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
  first = np.argmax(fits, axis=1)
  rows = np.arange(count)
  crop_w, crop_h = crop_w[rows, first], crop_h[rows, first]
  found = fits[rows, first]
  # Fallback: the whole image's centre at the nearest allowed aspect ratio.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_w, fallback_h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fallback_w, fallback_h = int(round(height * ratio[1])), height
  else:
    fallback_w, fallback_h = width, height
  crop_w = np.where(found, crop_w, fallback_w)
  crop_h = np.where(found, crop_h, fallback_h)
  top = np.where(found, np.floor(rng.random(count) * (height - crop_h + 1)),
                 (height - crop_h) // 2).astype(np.int64)
  left = np.where(found, np.floor(rng.random(count) * (width - crop_w + 1)),
                  (width - crop_w) // 2).astype(np.int64)
  return np.stack([top, left, crop_h, crop_w], axis=1)


def draft_factor(boxes: np.ndarray, size: tuple[int, int]) -> int:
  """The largest of 1, 2, 4, 8 by which the image may shrink with every box still covering at
  least ``size`` pixels (so the resize after it only ever shrinks, as from the full image)."""
  slack = min(float(np.min(boxes[:, 2])) / size[0], float(np.min(boxes[:, 3])) / size[1])
  factor = 1
  while factor < 8 and slack >= 2 * factor:
    factor *= 2
  return factor


# OpenCV's flags for a full or DCT-scaled (1/2, 1/4, 1/8) decode; IGNORE_ORIENTATION: pixels as
# stored, as Pillow (and torchvision's loader) give them.
_COLOR_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_GRAY_FLAGS = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
               4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def _header(image: bytes, channels: int | None) -> tuple[int, int, bool, bool]:
  """``(height, width, gray, jpeg)`` from the file's header (Pillow parses it, decodes nothing)."""
  with Image.open(io.BytesIO(image)) as pil:
    width, height = pil.size
    gray = channels == 1 or (channels is None and pil.mode in ("L", "1", "I;16"))
    return height, width, gray, pil.format == "JPEG"


def _decode(image: bytes, gray: bool, factor: int, channels: int | None) -> np.ndarray:
  """uint8 ``(H / factor, W / factor, C)``, RGB or grey. OpenCV decodes (libjpeg-turbo, the same
  pixels as Pillow, about 20% less CPU); formats it lacks go through Pillow at full size."""
  flags = (_GRAY_FLAGS if gray else _COLOR_FLAGS)[factor] | cv2.IMREAD_IGNORE_ORIENTATION
  array = cv2.imdecode(np.frombuffer(image, np.uint8), flags)
  if array is None:
    return decode_image(image, channels)
  if gray:
    return array[:, :, None]
  return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def _scaled_box(box: np.ndarray, scale_y: float, scale_x: float) -> tuple[slice, slice]:
  """The rows and columns of ``box`` (original pixels) in an image scaled by the decoder, edges
  rounded to the nearest pixel (at most half a scaled pixel off)."""
  top, left, crop_h, crop_w = (int(v) for v in box)
  y0, x0 = round(top * scale_y), round(left * scale_x)
  y1 = max(y0 + 1, round((top + crop_h) * scale_y))
  x1 = max(x0 + 1, round((left + crop_w) * scale_x))
  return slice(y0, y1), slice(x0, x1)


def crop_views(image: np.ndarray | bytes, rng: np.random.Generator, config: HostCropConfig,
               channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``config.views`` random resized crops of one image from a single decode.

  Returns:
    ``(views, boxes)``: uint8 ``(views, h, w, C)`` and the boxes in original-image pixels
    (``(views, 4)`` as :func:`sample_boxes`).
  """
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    image = bytes(image)
    height, width, gray, jpeg = _header(image, channels)
    boxes = sample_boxes(rng, height, width, config.views, config.scale, config.ratio)
    factor = draft_factor(boxes, config.size) if config.draft and jpeg else 1
    pixels = _decode(image, gray, factor, channels)
  else:
    pixels = decode_image(image, channels)
    height, width = pixels.shape[:2]
    boxes = sample_boxes(rng, height, width, config.views, config.scale, config.ratio)
  # The decoder may round the scaled size up; boxes scale by what it did.
  scale_y, scale_x = pixels.shape[0] / height, pixels.shape[1] / width
  out = np.empty((config.views, *config.size, pixels.shape[2]), np.uint8)
  for view, box in zip(out, boxes):
    rows, cols = _scaled_box(box, scale_y, scale_x)
    crop = pixels[rows, cols]
    if crop.shape[2] == 1:
      resample.resize_crop(crop[:, :, 0], config.size, out=view[:, :, 0])
    else:
      resample.resize_crop(crop, config.size, out=view)
  return out, boxes


class RandomCropViews:
  """Per-example pipeline stage: decode once, cut ``config.views`` random resized crops.

  Maps ``{'image', 'label', 'index', 'epoch'}`` to ``{'image': uint8 (views, h, w, C), 'label',
  'index'}``. The crops of an example are drawn from ``np.random.default_rng((seed, epoch,
  index))``: deterministic (a resumed run cuts the same crops), new every epoch, independent of
  the order or the process that reads the example.
  """

  def __init__(self, config: HostCropConfig, channels: int | None = None, seed: int = 0):
    self.config, self.channels, self.seed = config, channels, seed

  def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
    index = int(record["index"])
    # Padding rows (index -1) only appear in evaluation, which does not crop; keep them valid.
    rng = np.random.default_rng((self.seed, int(record.get("epoch", 0)), max(index, 0)))
    views, _ = crop_views(record["image"], rng, self.config, self.channels)
    return {"image": views, "label": np.int32(record["label"]), "index": np.int32(index)}
