"""Backbone + projection head: the network a contrastive step trains.

``Encoder.__call__`` gives the projections the loss uses; ``Encoder.features`` gives the
backbone features that evaluation (kNN, linear probe) uses::

    z = model.apply(variables, x, train=True, mutable=["batch_stats"])     # ((B, d), updates)
    h = model.apply(variables, x, train=False, method=Encoder.features)    # (B, F)

Parameter tree: ``{'backbone': ..., 'head': ...}``; BatchNorm statistics live in the
``batch_stats`` collection. Under ``jax.jit`` with the batch sharded over devices the BN
statistics are computed over the global batch (what SyncBN does in PyTorch).
"""

from __future__ import annotations

import flax.linen as nn


class Encoder(nn.Module):
  """Attributes:
    backbone: maps ``(B, H, W, C)`` images to float32 ``(B, F)`` features; takes ``train``.
    head: maps ``(B, F)`` to float32 ``(B, d)``; takes ``train``.
  """

  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    """Projections float32 ``(B, d)`` of images ``(B, H, W, C)`` (not normalised to unit norm)."""
    return self.head(self.backbone(x, train=train), train=train)

  def features(self, x, train: bool = False):
    """Backbone features float32 ``(B, F)``; the head's parameters are not touched."""
    return self.backbone(x, train=train)

  def features_and_projections(self, x, train: bool = True):
    """Both at once: ``(features (B, F), projections (B, d))``, one backbone pass."""
    features = self.backbone(x, train=train)
    return features, self.head(features, train=train)
