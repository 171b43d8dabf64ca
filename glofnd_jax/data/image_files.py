"""Reading one image file for conversion: a full decode to verify it, then normalisation.

Whatever a folder holds comes out as an 8-bit greyscale (``L``) or RGB Pillow image, upright:

* EXIF orientation is applied (a phone photo stored sideways is trained upright);
* 16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) is scaled to 8 bits, not clipped;
* palette images become RGB, CMYK/YCbCr/LAB/HSV become RGB, 1-bit becomes greyscale;
* transparency (RGBA, LA, a palette's transparent colour) is composited over white, so a
  transparent background does not turn into whatever colour its hidden pixels hold.

:func:`load_verified` also says which bytes to store: the file itself when it is a JPEG or PNG
that needed none of this, else a PNG of the normalised image (so the input pipeline's plain
decode sees the same pixels).
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_STORED_AS_IS = ("JPEG", "PNG")


class BadImage(Exception):
  """The file does not decode as an image (the message says why)."""


def _to_8bit_grey(image: Image.Image) -> Image.Image:
  """``I;16``/``I``/``F`` (high bit depth greyscale) -> ``L``, scaled from the type's range."""
  array = np.asarray(image, dtype=np.float64)
  top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
  if image.mode == "F" and array.max(initial=0) <= 1.0:
    top = 1.0  # float images in [0, 1]
  return Image.fromarray(np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def _over_white(image: Image.Image) -> Image.Image:
  """An image with alpha (``RGBA``/``LA``) composited over a white background."""
  rgba = image.convert("RGBA")
  background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  out = Image.alpha_composite(background, rgba).convert("RGB")
  return out.convert("L") if image.mode == "LA" else out


def normalise(image: Image.Image) -> Image.Image:
  """An upright 8-bit ``L`` or ``RGB`` copy of a decoded image (see the module docstring)."""
  image = ImageOps.exif_transpose(image)
  mode = image.mode
  if mode in ("L", "RGB"):
    return image
  if mode == "1":
    return image.convert("L")
  if mode.startswith("I") or mode == "F":
    return _to_8bit_grey(image)
  if mode in ("P", "PA"):
    has_alpha = mode == "PA" or "transparency" in image.info
    return _over_white(image.convert("RGBA")) if has_alpha else image.convert("RGB")
  if mode in ("RGBA", "LA", "RGBa", "La"):
    return _over_white(image)
  return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def _needs_rotation(image: Image.Image) -> bool:
  orientation = image.getexif().get(0x0112, 1)
  return orientation not in (None, 1)


def load_verified(path: str | pathlib.Path) -> tuple[Image.Image, bytes]:
  """``(normalised image, bytes to store)`` of an image file; :class:`BadImage` if it does not
  decode completely (truncated, not an image, unsupported)."""
  data = pathlib.Path(path).read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as opened:
      opened.load()  # the full decode: a truncated file fails here, not at train time
      kind, mode, rotated = opened.format, opened.mode, _needs_rotation(opened)
      image = normalise(opened)
      image.load()
  except Exception as error:  # pylint: disable=broad-except  # Pillow raises many types
    raise BadImage(f"{type(error).__name__}: {' '.join(str(error).split())}") from None
  if kind in _STORED_AS_IS and mode in ("L", "RGB") and not rotated:
    return image, data
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return image, buffer.getvalue()
