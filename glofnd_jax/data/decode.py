"""Host-side image decoding and resizing, run per example inside the grain pipeline.

Sources hand over an image either as a uint8 array or as the bytes of an encoded file; every
batch must hold one fixed shape, so large or variable-size images are resized here (on the host,
in grain's threads or workers) and the random augmentations run later, batched on the
accelerator (:mod:`glofnd_jax.augment`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

RESIZE_MODES = ("center_crop", "stretch")


def decode_image(image: np.ndarray | bytes, channels: int | None = None) -> np.ndarray:
  """Decodes to a uint8 ``(H, W, C)`` array.

  Args:
    image: uint8 array ``(H, W)``/``(H, W, C)`` or encoded image bytes (anything Pillow reads).
    channels: if set (1 or 3), convert to that many channels (grayscale <-> RGB).

  Returns:
    uint8 array ``(H, W, C)``.
  """
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    with Image.open(io.BytesIO(bytes(image))) as pil:
      mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if pil.mode in ("L", "1", "I;16") else "RGB")
      array = np.asarray(pil.convert(mode))
  else:
    array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {array.dtype}.")
  if array.ndim == 2:
    array = array[:, :, None]
  if channels is not None and array.shape[-1] != channels:
    if array.shape[-1] == 1 and channels == 3:
      array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 3 and channels == 1:
      # ITU-R 601-2 luma, the weights Pillow's convert('L') uses.
      luma = array.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      array = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    else:
      raise ValueError(f"cannot convert {array.shape[-1]} channels to {channels}.")
  return array


def resize_image(image: np.ndarray, size: tuple[int, int], mode: str = "center_crop") -> np.ndarray:
  """Resizes a uint8 ``(H, W, C)`` image to ``size = (height, width)``.

  Args:
    image: uint8 ``(H, W, C)``.
    size: target ``(height, width)``.
    mode: ``'center_crop'``: scale so the image covers ``size`` keeping its aspect ratio, then
      crop the centre (the usual ImageNet "resize shorter side, centre crop"); ``'stretch'``:
      scale each axis independently.

  Returns:
    uint8 ``(height, width, C)``; the input itself when it already has that size.
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}.")
  height, width = size
  in_height, in_width, channels = image.shape
  if (in_height, in_width) == (height, width):
    return image
  pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
  if mode == "stretch":
    pil = pil.resize((width, height), Image.BICUBIC)
  else:
    scale = max(height / in_height, width / in_width)
    new_height = max(height, round(in_height * scale))
    new_width = max(width, round(in_width * scale))
    pil = pil.resize((new_width, new_height), Image.BICUBIC)
    top, left = (new_height - height) // 2, (new_width - width) // 2
    pil = pil.crop((left, top, left + width, top + height))
  out = np.asarray(pil)
  return out[:, :, None] if out.ndim == 2 else out


class DecodeAndResize:
  """Per-example pipeline stage: decode the image, optionally resize, fix dtypes.

  Maps ``{'image', 'label', 'index', ...}`` to ``{'image': uint8 (H, W, C), 'label': np.int32,
  'index': np.int32}`` (other keys are dropped so every source batches the same way).
  """

  def __init__(self, image_size: tuple[int, int] | None = None, channels: int | None = None,
               resize_mode: str = "center_crop"):
    if resize_mode not in RESIZE_MODES:
      raise ValueError(f"resize mode {resize_mode!r} is not one of {RESIZE_MODES}.")
    self.image_size = None if image_size is None else tuple(image_size)
    self.channels = channels
    self.resize_mode = resize_mode

  def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
    # A record that does not decode is named (or replaced) by the pipeline's
    # :class:`~glofnd_jax.data.bad_records.GuardedDecode` around this stage.
    image = decode_image(record["image"], self.channels)
    if self.image_size is not None:
      image = resize_image(image, self.image_size, self.resize_mode)
    return {"image": image, "label": np.int32(record["label"]), "index": np.int32(record["index"])}
