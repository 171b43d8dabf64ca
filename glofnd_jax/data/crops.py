"""Random resized crops on the host: both training views cut from one decode of the whole image.

The geometry is torchvision's ``RandomResizedCrop.get_params`` (area fraction uniform in
``scale``, log aspect ratio uniform in ``log(ratio)``, 10 tries, then a centre crop at the
nearest allowed ratio), sampled over the **original** image, so crops reach every border and
their scale is relative to the whole image (not to a pre-resized square).

Cost: a JPEG is decoded once per example for both views, and when every view's box is at least
twice the output size in both directions the decoder is asked for a 1/2, 1/4 or 1/8 image
(``PIL.Image.draft``: libjpeg scales in the DCT domain, skipping most of the inverse transform);
each view is then cut and resized in one antialiased bilinear ``Image.resize(box=...)``. The views
leave as uint8; colour jitter, greyscale, blur, solarize and flips run batched on the
accelerator (:mod:`glofnd_jax.augment`).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image

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


def _open(image: np.ndarray | bytes, channels: int | None) -> Image.Image:
  """A PIL image, not yet decoded when ``image`` is an encoded file (so ``draft`` applies)."""
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    return Image.open(io.BytesIO(bytes(image)))
  array = decode_image(image, channels)
  return Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else array)


def _mode(pil: Image.Image, channels: int | None) -> str:
  return {1: "L", 3: "RGB"}.get(channels) or ("L" if pil.mode in ("L", "1", "I;16") else "RGB")


def crop_views(image: np.ndarray | bytes, rng: np.random.Generator, config: HostCropConfig,
               channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``config.views`` random resized crops of one image from a single decode.

  Returns:
    ``(views, boxes)``: uint8 ``(views, h, w, C)`` and the boxes in original-image pixels
    (``(views, 4)`` as :func:`sample_boxes`).
  """
  pil = _open(image, channels)
  width, height = pil.size
  boxes = sample_boxes(rng, height, width, config.views, config.scale, config.ratio)
  mode = _mode(pil, channels)
  factor = draft_factor(boxes, config.size) if config.draft else 1
  if factor > 1 and pil.format == "JPEG":
    pil.draft(mode, (math.ceil(width / factor), math.ceil(height / factor)))
  if pil.mode != mode:
    pil = pil.convert(mode)
  # The decoder may shrink by less than asked; boxes scale by what it did.
  scale_x, scale_y = pil.size[0] / width, pil.size[1] / height
  out_h, out_w = config.size
  views = []
  for top, left, crop_h, crop_w in boxes:
    box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
    views.append(np.asarray(pil.resize((out_w, out_h), Image.BILINEAR, box=box)))
  out = np.stack(views)
  return (out[..., None] if out.ndim == 3 else out), boxes


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
