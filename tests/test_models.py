"""Models: output shapes, BatchNorm state, the head's affine-free last BN, bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax.models import Encoder, get_backbone, get_model


def _init(model, x):
  # An 'rbg' key: compiling threefry for every parameter shape dominated these tests on CPU
  # (ResNet-18 init: ~13 s with threefry, ~2.5 s with rbg).
  key = jax.random.key(0, impl="rbg")
  return jax.jit(lambda key, x: model.init(key, x, train=False))(key, x)


def _shapes(fn, *args):
  """Output shapes only (tracing, no compute): enough for layout checks."""
  return jax.tree.map(lambda a: a.shape, jax.eval_shape(fn, *args))


@pytest.mark.parametrize("name, kwargs, shape, feature_dim", [
    ("small_cnn", {}, (4, 8, 8, 1), 256),
    ("resnet18", {"stem": "cifar", "num_filters": 8}, (2, 16, 16, 3), 64),
    ("resnet18", {"stem": "imagenet", "num_filters": 8}, (2, 32, 32, 3), 64),
    ("resnet50", {"stem": "cifar"}, (2, 32, 32, 3), 2048),
])
def test_encoder_shapes(name, kwargs, shape, feature_dim):
  model = get_model(name, proj_dim=16, **kwargs)
  x = jnp.ones(shape, jnp.float32)
  variables = _init(model, x)
  z, h = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                          method=Encoder.features_and_projections)[::-1])(
                                              variables, x)
  np.testing.assert_allclose(
      h, jax.jit(lambda v, x: model.apply(v, x, method=Encoder.features))(variables, x))
  assert z.shape == (shape[0], 16) and z.dtype == jnp.float32
  assert h.shape == (shape[0], feature_dim) and h.dtype == jnp.float32
  assert model.backbone.num_features == feature_dim
  # Head hidden width defaults to the feature dimension (2048 on ResNet-50, as SogCLR).
  assert variables["params"]["head"]["dense1"]["kernel"].shape == (feature_dim, feature_dim)


def test_resnet50_layout():
  backbone = get_backbone("resnet50", stem="imagenet", num_filters=4)
  params = _shapes(lambda x: backbone.init(jax.random.key(0), x, train=False),
                   jnp.ones((1, 32, 32, 3)))["params"]
  assert sorted(k for k in params if k.startswith("stage")) == sorted(
      f"stage{s + 1}_block{b + 1}" for s, n in enumerate((3, 4, 6, 3)) for b in range(n))
  assert params["stem_conv"]["kernel"] == (7, 7, 3, 4)
  assert params["stage4_block1"]["conv3"]["kernel"] == (1, 1, 32, 128)
  cifar = get_backbone("resnet18", stem="cifar", num_filters=4)
  cifar_params = _shapes(lambda x: cifar.init(jax.random.key(0), x, train=False),
                         jnp.ones((1, 8, 8, 3)))["params"]
  assert cifar_params["stem_conv"]["kernel"] == (3, 3, 3, 4)


def test_imagenet_stem_downsamples_by_32_cifar_by_8():
  x = jnp.ones((1, 64, 64, 3))
  for stem, cells in (("imagenet", 2), ("cifar", 8)):
    backbone = get_backbone("resnet18", stem=stem, num_filters=4)
    _, state = _shapes(lambda x: backbone.init_with_output(
        jax.random.key(0), x, train=False, capture_intermediates=True), x)
    last = state["intermediates"]["stage4_block2"]["__call__"][0]
    assert last[1:3] == (cells, cells), stem


def test_train_mode_updates_batch_stats_and_eval_mode_uses_them():
  model = get_model("small_cnn", proj_dim=8, widths=(4, 8, 8), feature_dim=16)
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1)) * 3 + 1
  variables = _init(model, x)
  z, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  before, after = variables["batch_stats"], updates["batch_stats"]
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed))
  assert set(after) == {"backbone", "head"}
  # Train-mode output is standardised per dimension by the head's last BN.
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1, atol=1e-2)
  # Eval mode is deterministic and does not need a mutable collection.
  z_eval = model.apply({"params": variables["params"], "batch_stats": after}, x, train=False)
  assert z_eval.shape == (8, 8)


def test_last_head_bn_has_no_affine_params():
  model = get_model("small_cnn", proj_dim=8, proj_layers=3, proj_hidden_dim=12)
  variables = _shapes(lambda x: model.init(jax.random.key(0), x, train=False),
                      jnp.ones((2, 8, 8, 1)))
  head = variables["params"]["head"]
  assert "bn3" not in head  # no scale, no bias
  assert set(head["bn1"]) == set(head["bn2"]) == {"scale", "bias"}
  assert set(variables["batch_stats"]["head"]["bn3"]) == {"mean", "var"}
  assert all("bias" not in layer for name, layer in head.items() if name.startswith("dense"))


def test_zero_init_residual():
  backbone = get_backbone("resnet18", stem="cifar", num_filters=4, zero_init_residual=True)
  params = _init(backbone, jnp.ones((1, 8, 8, 3)))["params"]
  assert not jnp.any(params["stage1_block1"]["bn2"]["scale"])
  assert jnp.all(params["stage1_block1"]["bn1"]["scale"] == 1)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("small_cnn", {}, (4, 8, 8, 1)),
    ("resnet18", {"stem": "cifar", "num_filters": 8}, (2, 16, 16, 3)),
])
def test_bfloat16_compute_float32_params_and_outputs(name, kwargs, shape):
  model = get_model(name, proj_dim=16, dtype="bfloat16", **kwargs)
  x = jax.random.normal(jax.random.key(2), shape)
  variables = _init(model, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  apply = jax.jit(lambda m, v, x: m.apply(v, x, train=True, mutable=["batch_stats"]),
                  static_argnums=0)
  z, updates = apply(model, variables, x)
  h = jax.jit(lambda v, x: model.apply(v, x, method=Encoder.features))(variables, x)
  assert z.dtype == jnp.float32 and h.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(z)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(updates))
  # The bf16 network computes the same function as the f32 one, to bf16 accuracy. (Compared in
  # eval mode: train-mode BN over a batch of 2 maps everything to about +-1, where a tiny
  # difference can flip a sign.)
  reference = get_model(name, proj_dim=16, **kwargs)
  evaluate = jax.jit(lambda m, v, x: m.apply(v, x, train=False), static_argnums=0)
  z16, z32 = evaluate(model, variables, x), evaluate(reference, variables, x)
  assert float(jnp.linalg.norm(z16 - z32) / jnp.linalg.norm(z32)) < 0.05


def test_gradients_reach_backbone_and_head():
  model = get_model("small_cnn", proj_dim=8, widths=(4, 8, 8), feature_dim=16)
  x = jax.random.normal(jax.random.key(3), (6, 8, 8, 1))
  variables = _init(model, x)

  def loss(params):
    z, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                       train=True, mutable=["batch_stats"])
    return jnp.sum(z[:, 0] * jnp.arange(6.0))

  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="unknown model"):
    get_model("vit")
  with pytest.raises(ValueError, match="stem"):
    backbone = get_backbone("resnet18", stem="tiny", num_filters=4)
    jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), jnp.ones((1, 8, 8, 3)))
