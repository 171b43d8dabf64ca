"""SimCLR's projection head, as SogCLR and GloFND use it.

``num_layers`` bias-free dense layers; every layer but the last is followed by BatchNorm and
ReLU, the last by a BatchNorm **without** scale or bias (``affine=False`` in PyTorch), i.e. a
plain standardisation of each output dimension. That last BN runs in float32 whatever the
compute dtype, so the projections the loss sees are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from glofnd_jax.models import layers


class ProjectionHead(nn.Module):
  """Attributes:
    hidden_dim: width of the hidden layers (SogCLR: 2048 on ResNet-50).
    out_dim: projection dimension d (128).
    num_layers: dense layers (>= 1; 2 in SogCLR's ImageNet recipe).
    dtype: compute dtype of the hidden layers.
  """

  hidden_dim: int = 2048
  out_dim: int = 128
  num_layers: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Args: x: ``(B, F)`` backbone features. Returns: float32 ``(B, out_dim)``."""
    if self.num_layers < 1:
      raise ValueError(f"num_layers={self.num_layers} must be >= 1.")
    x = x.astype(self.dtype)
    for i in range(self.num_layers - 1):
      x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype, name=f"dense{i + 1}")(x)
      x = nn.relu(layers.batch_norm(train, self.dtype, name=f"bn{i + 1}")(x))
    x = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                 name=f"dense{self.num_layers}")(x)
    return layers.batch_norm(train, jnp.float32, name=f"bn{self.num_layers}", use_scale=False,
                use_bias=False)(x.astype(jnp.float32))
