"""CLIP dual encoder (Flax Linen): image tower, text transformer, learnable logit scale.

Image towers (``(B, H, W, C)`` float images -> float32 ``(B, embed_dim)``):

* :class:`ModifiedResNet`: CLIP's ResNet: a stem of three 3x3 convolutions and an average pool,
  bottlenecks that downsample by average pooling before the last 1x1 convolution (and in the
  shortcut), and attention pooling (a multi-head attention whose query is the mean of the
  spatial tokens) instead of a global average pool. RN50: ``layers=(3, 4, 6, 3), width=64``,
  embed 1024.
* :class:`VisionTransformer`: patch embedding, class token, pre/post LayerNorm, projection.
  ViT-B/32: patch 32, width 768, 12 layers, 12 heads, embed 512.
* :class:`ConvTower`: the small CNN of :mod:`glofnd_jax.models.small_cnn` with a linear
  projection, for 8x8 digits and tests (a tiny ViT is ``VisionTransformer`` with small sizes).

:class:`TextTransformer`: token and position embeddings, a causal transformer, a final
LayerNorm, and the feature read at the end token, the largest id of each sequence (CLIP's
``text.argmax(-1)``; :mod:`glofnd_jax.data.tokenizer` guarantees it), then a linear projection.

:class:`CLIP` returns ``(image_features, text_features, logit_scale)`` with
``logit_scale = exp(s)`` for a scalar parameter ``s`` initialised to ``log(1 / temperature)``
(``log(1 / 0.07)``), as :func:`glofnd_jax.training.step.make_bimodal_train_step` expects. The
clamp ``s <= log(100)`` (scale at most 100) is applied to the parameter after every optimiser
step (:func:`glofnd_jax.training.optim.clamp_logit_scale`), as CLIP's training code does, so the
gradient through ``exp(s)`` is never cut. With a constant temperature (FastCLIP-v1) the
optimiser leaves ``s`` untouched. Features are returned unnormalised; the loss normalises.

Initialisation follows CLIP (normal with the widths' inverse square roots; zero-initialised last
BatchNorm of each bottleneck). ``dtype`` is the compute dtype; parameters, LayerNorms, the pooled
features and the outputs are float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from glofnd_jax.models import layers
from glofnd_jax.models.small_cnn import SmallCNN

MAX_LOGIT_SCALE = 100.0


def normal(std: float):
  return nn.initializers.normal(stddev=std)


class Attention(nn.Module):
  """Multi-head attention of ``query`` tokens over ``context`` tokens.

  Attributes:
    num_heads: heads (divides the width).
    out_dim: output width (default: the input width).
    in_std, out_std: init std of the q/k/v and output projections.
    dtype: compute dtype.
  """

  num_heads: int
  out_dim: int | None = None
  in_std: float | None = None
  out_std: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, context, mask=None):
    """query ``(B, Q, D)``, context ``(B, K, D)``, bool mask ``(Q, K)`` -> ``(B, Q, out)``."""
    width = query.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}.")
    head_dim = width // self.num_heads
    in_std = self.in_std or width ** -0.5
    dense = lambda name, std, features=width: nn.Dense(features, dtype=self.dtype,
                                                       kernel_init=normal(std), name=name)
    split = lambda x: x.reshape(*x.shape[:-1], self.num_heads, head_dim)
    q = split(dense("q_proj", in_std)(query))
    k = split(dense("k_proj", in_std)(context))
    v = split(dense("v_proj", in_std)(context))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*query.shape[:-1], width)
    return dense("out_proj", self.out_std or width ** -0.5, self.out_dim or width)(out)


def quick_gelu(x):
  """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False), "quick_gelu": quick_gelu}


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)


class ResidualBlock(nn.Module):
  """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

  num_heads: int
  num_layers: int  # of the whole transformer, for CLIP's depth-scaled init
  activation: str = "gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    width = x.shape[-1]
    proj_std = width ** -0.5 * (2 * self.num_layers) ** -0.5
    y = _layer_norm("ln_1")(x).astype(self.dtype)
    x = x + Attention(self.num_heads, out_std=proj_std, dtype=self.dtype, name="attn")(y, y, mask)
    y = _layer_norm("ln_2")(x).astype(self.dtype)
    y = nn.Dense(4 * width, dtype=self.dtype, kernel_init=normal((2 * width) ** -0.5),
                 name="c_fc")(y)
    y = ACTIVATIONS[self.activation](y)
    return x + nn.Dense(width, dtype=self.dtype, kernel_init=normal(proj_std), name="c_proj")(y)


class Transformer(nn.Module):
  num_layers: int
  num_heads: int
  activation: str = "gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}.")
    for i in range(self.num_layers):
      x = ResidualBlock(self.num_heads, self.num_layers, self.activation, self.dtype,
                        name=f"block{i}")(x, mask)
    return x


class Tower(nn.Module):
  """Every tower's ``embed_dim`` (output width; the image and text towers of one CLIP agree),
  compute ``dtype``, and final linear projection."""

  embed_dim: int = 512
  dtype: Any = jnp.float32

  def project(self, x, name: str, std: float):
    """``x @ P`` for a ``(features, embed_dim)`` parameter ``P`` (normal ``std``), float32."""
    proj = self.param(name, normal(std), (x.shape[-1], self.embed_dim))
    return jnp.dot(x, proj).astype(jnp.float32)


class TransformerTower(Tower):
  """A tower around a :class:`Transformer` (the ViT image tower and the text tower).

  Attributes:
    width, num_layers, num_heads: the transformer's (CLIP text tower: 512, 12, 8).
    activation: ``'gelu'`` or ``'quick_gelu'``.
  """

  width: int = 512
  num_layers: int = 12
  num_heads: int = 8
  activation: str = "gelu"

  def transform(self, x, mask=None):
    return Transformer(self.num_layers, self.num_heads, self.activation, self.dtype,
                       name="transformer")(x, mask)


# ----------------------------------------------------------------------------- image towers


def _avg_pool(x, stride: int):
  return x if stride == 1 else nn.avg_pool(x, (stride, stride), strides=(stride, stride))


class CLIPBottleneck(nn.Module):
  """CLIP's bottleneck: every convolution has stride 1; a stride-s average pool comes before the
  last 1x1 convolution, and before the shortcut's 1x1 convolution (anti-aliased downsampling)."""

  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out = layers.conv(self.planes, 1, 1, self.dtype, "conv1")(x)
    out = nn.relu(layers.batch_norm(train, self.dtype, name="bn1")(out))
    out = layers.conv(self.planes, 3, 1, self.dtype, "conv2")(out)
    out = nn.relu(layers.batch_norm(train, self.dtype, name="bn2")(out))
    out = _avg_pool(out, self.stride)
    out = layers.batch_norm(train, self.dtype, name="bn3", scale_init=nn.initializers.zeros)(
        layers.conv(self.planes * 4, 1, 1, self.dtype, "conv3")(out))
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      x = _avg_pool(x, self.stride)
      x = layers.batch_norm(train, self.dtype, name="downsample_bn")(
          layers.conv(self.planes * 4, 1, 1, self.dtype, "downsample_conv")(x))
    return nn.relu(out + x)


class AttentionPool2d(nn.Module):
  """Attention pooling: the mean token (plus learned positions) attends over all spatial tokens."""

  num_heads: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """``(B, H, W, C)`` -> float32 ``(B, out_dim)``."""
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    positions = self.param("positional_embedding", normal(channels ** -0.5),
                           (height * width + 1, channels))
    tokens = (tokens + positions[None]).astype(self.dtype)
    std = channels ** -0.5
    pooled = Attention(self.num_heads, out_dim=self.out_dim, in_std=std, out_std=std,
                       dtype=self.dtype, name="attn")(tokens[:, :1], tokens)
    return pooled[:, 0].astype(jnp.float32)


class ModifiedResNet(Tower):
  """CLIP's ResNet image tower.

  Attributes:
    layers: bottlenecks per stage (RN50: ``(3, 4, 6, 3)``).
    width: stem / first-stage width (64); the output of the last stage has ``32 * width``
      channels.
    num_heads: attention-pool heads (0: ``32 * width // 64``, as CLIP).
    embed_dim, dtype: as :class:`Tower` (RN50: embed 1024).
  """

  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  num_heads: int = 0

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.astype(self.dtype)
    for i, (features, stride) in enumerate(((self.width // 2, 2), (self.width // 2, 1),
                                            (self.width, 1))):
      x = layers.conv(features, 3, stride, self.dtype, f"stem_conv{i + 1}")(x)
      x = nn.relu(layers.batch_norm(train, self.dtype, name=f"stem_bn{i + 1}")(x))
    x = _avg_pool(x, 2)
    for stage, blocks in enumerate(self.layers):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = CLIPBottleneck(self.width * 2 ** stage, stride, self.dtype,
                           name=f"layer{stage + 1}_{i}")(x, train)
    heads = self.num_heads or (32 * self.width) // 64
    return AttentionPool2d(heads, self.embed_dim, self.dtype, name="attnpool")(x)


class VisionTransformer(TransformerTower):
  """ViT image tower (CLIP's: class token, ``ln_pre``, ``ln_post`` on the class token, ``proj``).

  Attributes:
    patch_size: ViT-B/32: 32 (and width 768, 12 layers, 12 heads, embed 512).
    The rest: as :class:`TransformerTower`.
  """

  patch_size: int = 32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # no dropout, no batch statistics
    batch, height, width, _ = x.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"image size {height}x{width} is not a multiple of patch_size="
                       f"{self.patch_size}.")
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=self.patch_size, padding="VALID",
                use_bias=False, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
    x = x.reshape(batch, -1, self.width)
    scale = self.width ** -0.5
    cls = self.param("class_embedding", normal(scale), (self.width,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x], 1)
    positions = self.param("positional_embedding", normal(scale), (x.shape[1], self.width))
    x = _layer_norm("ln_pre")(x + positions[None]).astype(self.dtype)
    x = _layer_norm("ln_post")(self.transform(x)[:, 0])
    return self.project(x, "proj", scale)


class ConvTower(Tower):
  """:class:`~glofnd_jax.models.small_cnn.SmallCNN` features and a linear projection."""

  widths: Sequence[int] = (32, 64, 128)
  feature_dim: int = 256

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = SmallCNN(widths=tuple(self.widths), feature_dim=self.feature_dim, dtype=self.dtype,
                 name="backbone")(x, train=train)
    return self.project(h, "proj", self.feature_dim ** -0.5)


# ----------------------------------------------------------------------------- text tower


class TextTransformer(TransformerTower):
  """CLIP's text encoder.

  Attributes:
    vocab_size: token ids (the tokenizer's ``vocab_size``).
    context_length: L (77).
    The rest: as :class:`TransformerTower` (RN50 and ViT-B/32: width 512, 12 layers, 8 heads).
  """

  vocab_size: int = 49408
  context_length: int = 77

  @nn.compact
  def __call__(self, text):
    """int ``(B, L)`` token ids (end token = largest id of each row) -> float32 ``(B, embed)``."""
    if text.shape[-1] != self.context_length:
      raise ValueError(f"text has length {text.shape[-1]}, the model context_length="
                       f"{self.context_length}: use the tokenizer's context length.")
    x = nn.Embed(self.vocab_size, self.width, embedding_init=normal(0.02),
                 name="token_embedding")(text)
    positions = self.param("positional_embedding", normal(0.01),
                           (self.context_length, self.width))
    x = (x + positions[None]).astype(self.dtype)
    causal = jnp.tril(jnp.ones((self.context_length, self.context_length), bool))
    x = _layer_norm("ln_final")(self.transform(x, causal))
    end = jnp.argmax(text, axis=-1)
    x = jnp.take_along_axis(x, end[:, None, None], axis=1)[:, 0]
    return self.project(x, "text_projection", self.width ** -0.5)


# ----------------------------------------------------------------------------- dual encoder


class CLIP(nn.Module):
  """Attributes:
    image_tower: ``(B, H, W, C), train -> (B, embed)``.
    text_tower: ``(B, L) -> (B, embed)``.
    temperature: initial temperature; the parameter ``logit_scale`` starts at ``log(1/T)``.
    bias_init: if set, a learnable scalar ``logit_bias`` starting here (SigLIP's b, -10); the
      train step reads it from the parameters.
  """

  image_tower: nn.Module
  text_tower: nn.Module
  temperature: float = 0.07
  bias_init: float | None = None

  def setup(self):
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(
        math.log(1.0 / self.temperature)), (), jnp.float32)
    if self.bias_init is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.bias_init), (),
                                   jnp.float32)

  def __call__(self, image, text, train: bool = True):
    """Returns ``(image_features (B, E), text_features (B, E), logit_scale ())``, float32."""
    return (self.image_tower(image, train=train), self.text_tower(text),
            jnp.exp(self.logit_scale))

  def encode_image(self, image, train: bool = False):
    return self.image_tower(image, train=train)

  def encode_text(self, text):
    return self.text_tower(text)


IMAGE_TOWERS = ("modified_resnet", "vit", "small_cnn")


def build_clip(*, image_tower: str, embed_dim: int, vocab_size: int, context_length: int,
               temperature: float = 0.07, resnet_layers: Sequence[int] = (3, 4, 6, 3),
               vision_width: int = 64, vision_heads: int = 0, vit_layers: int = 12,
               patch_size: int = 32, cnn_widths: Sequence[int] = (32, 64, 128),
               cnn_feature_dim: int = 256, text_width: int = 512, text_layers: int = 12,
               text_heads: int = 8, activation: str = "gelu", dtype: Any = jnp.float32,
               bias_init: float | None = None) -> CLIP:
  """A :class:`CLIP` from flat settings (what the config's ``model`` section holds).

  RN50 (CLIP): ``image_tower='modified_resnet', resnet_layers=(3, 4, 6, 3), vision_width=64,
  embed_dim=1024, text_width=512, text_layers=12, text_heads=8``. ViT-B/32: ``image_tower='vit',
  patch_size=32, vision_width=768, vit_layers=12, vision_heads=12, embed_dim=512`` and the same
  text tower.
  """
  dtype = jnp.dtype(dtype) if isinstance(dtype, str) else dtype
  if image_tower == "modified_resnet":
    image = ModifiedResNet(layers=tuple(resnet_layers), width=vision_width, num_heads=vision_heads,
                           embed_dim=embed_dim, dtype=dtype)
  elif image_tower == "vit":
    image = VisionTransformer(patch_size=patch_size, width=vision_width, num_layers=vit_layers,
                              num_heads=vision_heads or max(1, vision_width // 64),
                              activation=activation, embed_dim=embed_dim, dtype=dtype)
  elif image_tower == "small_cnn":
    image = ConvTower(widths=tuple(cnn_widths), feature_dim=cnn_feature_dim, embed_dim=embed_dim,
                      dtype=dtype)
  else:
    raise ValueError(f"model.image_tower={image_tower!r} is unknown; choose one of "
                     f"{', '.join(IMAGE_TOWERS)}.")
  text = TextTransformer(vocab_size=vocab_size, context_length=context_length, width=text_width,
                         num_layers=text_layers, num_heads=text_heads, activation=activation,
                         embed_dim=embed_dim, dtype=dtype)
  return CLIP(image_tower=image, text_tower=text, temperature=temperature, bias_init=bias_init)
