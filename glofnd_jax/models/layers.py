"""Layers every network here shares: PyTorch-compatible BatchNorm and convolution settings.

BatchNorm momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5; convolutions without bias and with
PyTorch's explicit symmetric padding (``kernel // 2`` on each side), so a strided convolution
sees the same pixels as in the reference code (Flax's ``'SAME'`` pads asymmetrically).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# He (fan-out) initialisation, torchvision's ResNet convolution init.
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(train: bool, dtype: Any, **kwargs) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults; batch statistics in training, running ones otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, **kwargs)


def conv(features: int, kernel: int, strides: int, dtype: Any, name: str, **kwargs) -> nn.Conv:
  """A square ``kernel`` convolution without bias, padded as PyTorch pads."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, name=name, **kwargs)
