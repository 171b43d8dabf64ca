"""A small CNN backbone for tiny images (the 8x8 digits default), fast on a CPU.

Three 3x3 convolutions (the second with stride 2) with BatchNorm and ReLU, then a flatten and a
dense layer: on 8x8 inputs the flatten keeps where strokes are, which a global pool would throw
away. Meant for images up to about 32x32 (the dense layer grows with the image area).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from glofnd_jax.models import layers


class SmallCNN(nn.Module):
  """Attributes:
    widths: channels of the three convolutions.
    feature_dim: output feature dimension F.
    dtype: compute dtype (parameters stay float32).
  """

  widths: Sequence[int] = (32, 64, 128)
  feature_dim: int = 256
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.feature_dim

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Args: x: float ``(B, H, W, C)`` normalised images. Returns: float32 ``(B, F)``."""
    norm = lambda name: layers.batch_norm(train, self.dtype, name=name)
    x = x.astype(self.dtype)
    for i, (width, strides) in enumerate(zip(self.widths, (1, 2, 1))):
      x = nn.Conv(width, (3, 3), strides=strides, padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=self.dtype, kernel_init=layers.he_fan_out, name=f"conv{i + 1}")(x)
      x = nn.relu(norm(f"bn{i + 1}")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.feature_dim, use_bias=False, dtype=self.dtype, name="fc")(x)
    x = nn.relu(norm("fc_bn")(x))
    return x.astype(jnp.float32)
