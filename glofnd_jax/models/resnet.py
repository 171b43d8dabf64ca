"""ResNet-18 and ResNet-50 backbones (Flax Linen) with CIFAR and ImageNet stems.

The torchvision v1.5 layout (stride on the 3x3 convolution of a bottleneck), with PyTorch's
padding (explicit ``(1, 1)`` for 3x3 convolutions, so strided convolutions see the same pixels as
in the reference code), BatchNorm momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5, and He
(fan-out) initialisation.

Stems: ``'imagenet'``: 7x7 stride-2 convolution and a 3x3 stride-2 max-pool (224 px inputs);
``'cifar'``: one 3x3 stride-1 convolution, no pool (32 px inputs, the SimCLR CIFAR variant).

The backbone returns globally average-pooled features, float32 ``(B, F)``, with ``F = 8 *
num_filters`` (basic blocks) or ``32 * num_filters`` (bottlenecks): 512 / 2048 at the standard
width 64. ``dtype`` is the compute dtype (e.g. bfloat16); parameters stay float32.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from glofnd_jax.models import layers

STEMS = ("imagenet", "cifar")
_he_conv = functools.partial(layers.conv, kernel_init=layers.he_fan_out)


class _Block(nn.Module):
  """What both residual blocks share: their settings and how a block ends."""

  features: int
  strides: int = 1
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32

  def close(self, x, y, last_bn: str, train: bool):
    """The last BatchNorm (scale zero-initialised when asked), then ``relu(y + shortcut(x))``
    with a 1x1 projection shortcut when the shapes differ."""
    last_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = layers.batch_norm(train, self.dtype, scale_init=last_init, name=last_bn)(y)
    if x.shape != y.shape:
      x = _he_conv(y.shape[-1], 1, self.strides, self.dtype, "downsample_conv")(x)
      x = layers.batch_norm(train, self.dtype, name="downsample_bn")(x)
    return nn.relu(y + x)


class BasicBlock(_Block):
  """Two 3x3 convolutions and a residual (ResNet-18/34)."""

  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    y = _he_conv(self.features, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, name="bn1")(y))
    y = _he_conv(self.features, 3, 1, self.dtype, "conv2")(y)
    return self.close(x, y, "bn2", train)


class Bottleneck(_Block):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and a residual (ResNet-50/101/152)."""

  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    y = _he_conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, name="bn1")(y))
    y = _he_conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(layers.batch_norm(train, self.dtype, name="bn2")(y))
    y = _he_conv(self.features * 4, 1, 1, self.dtype, "conv3")(y)
    return self.close(x, y, "bn3", train)


class ResNet(nn.Module):
  """A ResNet feature extractor.

  Attributes:
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    block: ``'basic'`` or ``'bottleneck'``.
    num_filters: width of the first stage (64 standard; smaller for tests).
    stem: ``'imagenet'`` or ``'cifar'``.
    zero_init_residual: initialise the last BN scale of every block to 0 (each block starts as
      the identity; Goyal et al. 2017).
    dtype: compute dtype.
  """

  stage_sizes: Sequence[int]
  block: str = "basic"
  num_filters: int = 64
  stem: str = "imagenet"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    """Feature dimension F of the output."""
    expansion = 4 if self.block == "bottleneck" else 1
    return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * expansion

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Args: x: float ``(B, H, W, C)`` normalised images. Returns: float32 ``(B, F)``."""
    if self.stem not in STEMS:
      raise ValueError(f"stem={self.stem!r} is not one of {STEMS}.")
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(self.block)
    if block_cls is None:
      raise ValueError(f"block={self.block!r} is not 'basic' or 'bottleneck'.")
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = _he_conv(self.num_filters, 7, 2, self.dtype, "stem_conv")(x)
      x = nn.relu(layers.batch_norm(train, self.dtype, name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _he_conv(self.num_filters, 3, 1, self.dtype, "stem_conv")(x)
      x = nn.relu(layers.batch_norm(train, self.dtype, name="stem_bn")(x))
    block = functools.partial(block_cls, zero_init_last_bn=self.zero_init_residual,
                              dtype=self.dtype)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block(self.num_filters * 2 ** stage, strides=strides,
                  name=f"stage{stage + 1}_block{i + 1}")(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
