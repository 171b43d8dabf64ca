"""A synthetic stand-in image source for tests: class-structured random images of any size.

Each class has a smooth random prototype (coarse noise upsampled to the image size); an example
is its class prototype plus independent per-pixel noise. Labels cycle through the classes
(``label = index mod num_classes``), so the classes are balanced, and every record is a pure
function of ``(seed, index)``: no storage, nothing to download, any number of records.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from PIL import Image


class SyntheticSource:
  """Random-access source yielding ``{'image': uint8 (H, W, C), 'label': int}``.

  Attributes:
    num_classes: number of classes.
    class_names: ``['class_0', ...]``.
    image_shape: ``(H, W, C)``.
  """

  def __init__(self, num_samples: int = 256, image_shape: tuple[int, int, int] = (32, 32, 3),
               num_classes: int = 10, seed: int = 0, noise: float = 40.0,
               split: str = "train"):
    """Args:
      num_samples: number of records.
      image_shape: ``(H, W, C)`` of every image.
      num_classes: number of classes (prototypes).
      seed: makes prototypes and noise reproducible.
      noise: standard deviation of the per-pixel noise, in uint8 units.
      split: splits of one ``seed`` share the class prototypes but draw different noise.
    """
    if num_samples <= 0 or num_classes <= 0:
      raise ValueError("num_samples and num_classes must be positive.")
    self._num_samples = num_samples
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = num_classes
    self.class_names = [f"class_{c}" for c in range(num_classes)]
    self._seed = seed
    self._noise = noise
    self._split_id = zlib.crc32(split.encode())  # stable across runs, unlike hash()
    height, width, channels = self.image_shape
    rng = np.random.default_rng([seed, 0])
    coarse = rng.uniform(0, 255, (num_classes, 4, 4, channels)).astype(np.float32)
    # Smooth prototypes: bilinear upsampling of a 4x4 grid, so crops of an image still look like
    # their class (what contrastive augmentations need to be learnable).
    self._prototypes = np.stack([
        np.stack([np.asarray(Image.fromarray(coarse[c, :, :, k], mode="F").resize(
            (width, height), Image.BILINEAR)) for k in range(channels)], axis=-1)
        for c in range(num_classes)])

  def __len__(self) -> int:
    return self._num_samples

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._num_samples:
      raise IndexError(f"index {index} out of range for {self._num_samples} records.")
    label = index % self.num_classes
    rng = np.random.default_rng([self._seed, 1, self._split_id, index])
    image = self._prototypes[label] + rng.normal(0.0, self._noise, self.image_shape)
    return {"image": np.clip(np.rint(image), 0, 255).astype(np.uint8), "label": label}

  def __repr__(self) -> str:
    return (f"SyntheticSource(num_samples={self._num_samples}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})")
