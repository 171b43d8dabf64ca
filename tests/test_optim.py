"""Optimisers: lr scaling, warmup + cosine, weight decay masked off biases and BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glofnd_jax.training import optim


def test_lr_scaling_and_schedule():
  assert optim.scaled_lr(0.075, 128, "sqrt") == pytest.approx(0.075 * 128**0.5)
  assert optim.scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
  assert optim.scaled_lr(1e-3, 512, "none") == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="optim.lr_scaling='cubic'"):
    optim.scaled_lr(0.1, 8, "cubic")
  with pytest.raises(ValueError, match="optim.lr=0"):
    optim.scaled_lr(0, 8, "none")
  schedule = optim.make_schedule(1.0, 10, 110)
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.5, abs=1e-3) and float(schedule(110)) < 1e-6


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_skips_biases_and_batchnorm(name):
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,))},
            "bn": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))}}
  tx = optim.make_optimizer(name, optax.constant_schedule(0.1), weight_decay=0.5)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert np.all(np.asarray(updates["conv"]["kernel"]) < 0)  # decayed towards 0
  for leaf in (updates["conv"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
    np.testing.assert_array_equal(leaf, 0.0)
  with pytest.raises(ValueError, match="optim.name='adam2'"):
    optim.make_optimizer("adam2", optax.constant_schedule(0.1))
