"""CLIP model (towers, pooling, logit scale) and its optimiser (groups, temperature lr, clamp)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glofnd_jax import losses
from glofnd_jax.models import clip
from glofnd_jax.training import optim

VOCAB, CONTEXT = 50, 8


def tiny(image_tower="small_cnn", **kwargs):
  settings = dict(image_tower=image_tower, embed_dim=16, vocab_size=VOCAB,
                  context_length=CONTEXT, text_width=32, text_layers=2, text_heads=4,
                  cnn_widths=(4, 8, 8), cnn_feature_dim=16, vision_width=32, vit_layers=1,
                  vision_heads=4, patch_size=2, resnet_layers=(1, 1, 1, 1))
  settings.update(kwargs)
  return clip.build_clip(**settings)


def texts(batch, rng=0):
  """Token rows [SOT, words..., EOT, 0...] with EOT = VOCAB - 1 the largest id."""
  rng = np.random.default_rng(rng)
  out = np.zeros((batch, CONTEXT), np.int32)
  for i in range(batch):
    n = rng.integers(1, CONTEXT - 1)
    out[i, 0] = VOCAB - 2
    out[i, 1:n] = rng.integers(1, VOCAB - 2, n - 1)
    out[i, n] = VOCAB - 1
  return jnp.asarray(out)


# The modified ResNet trains in tests/test_clip_train.py (cc3m_fastclip_glofnd at toy size).
@pytest.mark.parametrize("tower,size,channels", [("small_cnn", 8, 1), ("vit", 8, 3)])
def test_tiny_towers_shapes_and_logit_scale(tower, size, channels):
  model = tiny(tower, vision_width=8 if tower == "modified_resnet" else 32)
  images = jnp.linspace(0, 1, 3 * size * size * channels).reshape(3, size, size, channels)
  # Jitted: Linen run eagerly compiles every operation on its own (slow on a CPU).
  variables = jax.jit(lambda: model.init(jax.random.key(0), images, texts(3), train=False))()
  (img, txt, scale), _ = jax.jit(lambda v: model.apply(v, images, texts(3), train=True,
                                                       mutable=["batch_stats"]))(variables)
  assert img.shape == txt.shape == (3, 16) and img.dtype == jnp.float32
  assert float(variables["params"]["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
  assert float(scale) == pytest.approx(1 / 0.07, rel=1e-6)
  assert bool(jnp.all(jnp.isfinite(img))) and bool(jnp.all(jnp.isfinite(txt)))


def test_text_is_read_at_the_end_token_with_a_causal_mask():
  model = tiny()
  tokens = texts(4)
  variables = jax.jit(lambda: model.init(jax.random.key(1), jnp.ones((4, 8, 8, 1)), tokens,
                                         train=False))()
  encode = jax.jit(lambda t: model.apply(variables, t, method=clip.CLIP.encode_text))
  base = encode(tokens)
  end = np.asarray(jnp.argmax(tokens, axis=-1))
  # Tokens after the end token cannot reach it (causal mask); tokens before it do.
  after = np.asarray(tokens).copy()
  before = np.asarray(tokens).copy()
  for i, e in enumerate(end):
    after[i, e + 1:] = 7
    before[i, max(e - 1, 0)] = 3 if before[i, max(e - 1, 0)] != 3 else 4
  np.testing.assert_allclose(encode(jnp.asarray(after)), base, atol=1e-6)
  assert not np.allclose(encode(jnp.asarray(before)), base, atol=1e-4)


def test_full_size_towers_match_clip_parameter_counts():
  """RN50 and ViT-B/32 at 224 px with CLIP's text tower: CLIP's published parameter counts."""
  for settings, expected in (
      (dict(image_tower="modified_resnet", embed_dim=1024), 102_007_137),
      (dict(image_tower="vit", embed_dim=512, vision_width=768, vision_heads=12,
            patch_size=32, vit_layers=12), 151_277_313)):
    model = clip.build_clip(vocab_size=49408, context_length=77, **settings)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                   jnp.zeros((1, 77), jnp.int32), train=False))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected


def test_modified_resnet_structure():
  """Stem to /4, three strided stages to /32, attention pooling over the mean token + positions;
  each bottleneck's last BatchNorm starts at zero (the block starts as its shortcut). Shapes only
  (the tower trains in tests/test_clip_train.py)."""
  model = clip.ModifiedResNet(layers=(1, 1, 1, 1), width=8, embed_dim=12)
  x = jnp.ones((2, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  params = variables["params"]
  assert params["attnpool"]["positional_embedding"].shape == (2 * 2 + 1, 256)
  assert params["stem_conv1"]["kernel"].shape == (3, 3, 3, 4)
  assert "downsample_conv" in params["layer2_0"] and "batch_stats" in variables
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 12) and out.dtype == jnp.float32
  block = clip.CLIPBottleneck(planes=2, stride=2)
  block_vars = jax.jit(lambda: block.init(jax.random.key(0), jnp.ones((1, 4, 4, 8)), False))()
  assert float(jnp.abs(block_vars["params"]["bn3"]["scale"]).max()) == 0.0
  assert block.apply(block_vars, jnp.ones((1, 4, 4, 8)), False).shape == (1, 2, 2, 8)


# ----------------------------------------------------------------------------- optimiser


def _params():
  return {"logit_scale": jnp.float32(math.log(1 / 0.07)),
          "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}


def test_temperature_lr_step_thresh():
  """lr_tau while tau > 0.03, lr_tau / 3 once tau <= 0.03, read from the current parameter."""
  tx = optim.scale_by_temperature_lr(2e-4)
  state = tx.init(None)
  ones = jnp.ones(())
  warm, _ = tx.update(ones, state, jnp.float32(math.log(1 / 0.05)))
  cold, _ = tx.update(ones, state, jnp.float32(math.log(1 / 0.02)))
  edge, _ = tx.update(ones, state, jnp.float32(math.log(1 / 0.0299)))
  assert float(warm) == pytest.approx(-2e-4)
  assert float(cold) == pytest.approx(-2e-4 / 3) and float(edge) == pytest.approx(-2e-4 / 3)


def test_clip_optimizer_groups_clamp_and_constant_temperature():
  params = _params()
  grads = {"logit_scale": jnp.float32(-1.0),  # pushes the scale up
           "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
  tx = optim.make_clip_optimizer(optax.constant_schedule(0.1), weight_decay=0.5,
                                      lr_tau=1.0, temperature_schedule="const")
  state = tx.init(params)
  for _ in range(5):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  # The logit scale grew at lr_tau and stopped at log(100): the scale never exceeds 100.
  assert float(params["logit_scale"]) == pytest.approx(math.log(100.0), abs=1e-6)
  assert math.exp(float(params["logit_scale"])) <= 100.0 * (1 + 1e-6)
  # Decay on the kernel only: with grads +1 both move by -lr per step, the kernel also decays.
  assert float(params["dense"]["bias"][0]) == pytest.approx(1.0 - 5 * 0.1, abs=1e-4)
  assert float(params["dense"]["kernel"][0, 0]) < float(params["dense"]["bias"][0])
  # Lower bound: a scale pushed down stops at 0 (temperature 1).
  low = {"logit_scale": jnp.float32(0.05), "dense": params["dense"]}
  updates, _ = tx.update({"logit_scale": jnp.float32(1.0), "dense": grads["dense"]},
                         tx.init(low), low)
  assert float(optax.apply_updates(low, updates)["logit_scale"]) == 0.0
  # Constant temperature (v1): the scale never moves, whatever its gradient.
  frozen = optim.make_clip_optimizer(optax.constant_schedule(0.1), weight_decay=0.1,
                                          learn_temperature=False)
  params = _params()
  updates, _ = frozen.update(grads, frozen.init(params), params)
  assert float(updates["logit_scale"]) == 0.0 and float(updates["dense"]["bias"][0]) != 0.0


def test_warmup_cosine_matches_fastclip():
  schedule = optim.warmup_cosine(1e-3, warmup_steps=10, total_steps=110)
  assert float(schedule(0)) == pytest.approx(1e-4)  # base * (step + 1) / warmup
  assert float(schedule(9)) == pytest.approx(1e-3)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(60)) == pytest.approx(5e-4)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)


def test_gamma_cosine_schedule():
  values = [float(losses.cosine_gamma(e, 0.2, 18)) for e in (0, 1, 9, 18, 30)]
  assert values[0] == 1.0 and values[3] == values[4] == pytest.approx(0.2)
  assert values[1] > values[2] > values[3]
  assert values[2] == pytest.approx(0.2 + 0.8 * 0.5, abs=1e-6)  # half way: the midpoint
