"""Models by name, as configs spell them: ``'small_cnn'``, ``'resnet18'``, ``'resnet50'``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from glofnd_jax.models.encoder import Encoder
from glofnd_jax.models.heads import ProjectionHead
from glofnd_jax.models.resnet import ResNet18, ResNet50
from glofnd_jax.models.small_cnn import SmallCNN

BACKBONES = {"small_cnn": SmallCNN, "resnet18": ResNet18, "resnet50": ResNet50}


def _dtype(dtype: Any) -> Any:
  return jnp.dtype(dtype) if isinstance(dtype, str) else dtype


def get_backbone(name: str, *, dtype: Any = jnp.float32, **kwargs: Any) -> nn.Module:
  """A backbone by name.

  Args:
    name: ``'small_cnn'``, ``'resnet18'`` or ``'resnet50'``.
    dtype: compute dtype (``jnp.bfloat16`` or ``'bfloat16'``); parameters stay float32.
    **kwargs: the backbone's attributes: ResNets take ``stem`` (``'imagenet'``/``'cifar'``),
      ``num_filters``, ``zero_init_residual``; the small CNN ``widths``, ``feature_dim``.

  Returns:
    A module ``(B, H, W, C) -> float32 (B, F)`` with a ``num_features`` property (F).
  """
  if name not in BACKBONES:
    raise ValueError(f"unknown model {name!r}; known: {sorted(BACKBONES)}.")
  return BACKBONES[name](dtype=_dtype(dtype), **kwargs)


def get_model(name: str, *, proj_dim: int = 128, proj_hidden_dim: int | None = None,
              proj_layers: int = 2, dtype: Any = jnp.float32, **backbone_kwargs: Any) -> Encoder:
  """An :class:`Encoder`: backbone ``name`` plus a SimCLR projection head.

  Args:
    name: backbone name, see :func:`get_backbone`.
    proj_dim: projection dimension d.
    proj_hidden_dim: hidden width of the head; None: the backbone's feature dimension (2048 for
      ResNet-50, as SogCLR).
    proj_layers: dense layers in the head.
    dtype: compute dtype of backbone and head (the head's last BN and outputs are float32).
    **backbone_kwargs: passed to :func:`get_backbone`.

  Returns:
    ``Encoder``: ``apply(v, x, train)`` -> float32 ``(B, proj_dim)``; ``method=Encoder.features``
    -> float32 ``(B, F)``.
  """
  backbone = get_backbone(name, dtype=dtype, **backbone_kwargs)
  hidden = backbone.num_features if proj_hidden_dim is None else proj_hidden_dim
  head = ProjectionHead(hidden_dim=hidden, out_dim=proj_dim, num_layers=proj_layers,
                        dtype=_dtype(dtype))
  return Encoder(backbone=backbone, head=head)
