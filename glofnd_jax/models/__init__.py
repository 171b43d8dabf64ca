"""Networks (Flax Linen): backbones, the SimCLR projection head, the encoder, and CLIP.

* :mod:`~glofnd_jax.models.layers`     shared BatchNorm / conv constructors and their constants.
* :mod:`~glofnd_jax.models.resnet`     ResNet-18 / ResNet-50, CIFAR or ImageNet stem.
* :mod:`~glofnd_jax.models.small_cnn`  a small CNN for 8x8 digits.
* :mod:`~glofnd_jax.models.heads`      projection head (last BN without scale/bias).
* :mod:`~glofnd_jax.models.encoder`    backbone + head; ``features`` for evaluation.
* :mod:`~glofnd_jax.models.clip`       CLIP: modified-ResNet / ViT / small-CNN image towers, the
  text transformer, :func:`~glofnd_jax.models.clip.build_clip`.
* :mod:`~glofnd_jax.models.registry`   by name: :func:`get_model` / :func:`get_backbone`.
"""

from glofnd_jax.models.encoder import Encoder
from glofnd_jax.models.heads import ProjectionHead
from glofnd_jax.models.registry import BACKBONES, get_backbone, get_model
from glofnd_jax.models.resnet import ResNet, ResNet18, ResNet50
from glofnd_jax.models.small_cnn import SmallCNN
