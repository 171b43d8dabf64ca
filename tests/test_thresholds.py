"""Threshold learner: Adam semantics, schedule rules, convergence to the dataset quantile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import thresholds as thr


def _batch(key, n=40, b=8, r=2, c=16):
  k1, k2 = jax.random.split(key)
  sims = jax.random.uniform(k1, (r, b, c), minval=-1.0, maxval=1.0)
  negatives = jax.random.bernoulli(k2, 0.8, (r, b, c))
  index = jnp.arange(b) * 3 % n
  return sims, negatives, index


def _reference_adam(lam, m, v, g, lr, b1, b2, eps, t):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  lam = lam - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return np.clip(lam, -1, 1), m, v


def test_update_matches_reference_adam_and_touches_only_batch_rows():
  config = thr.ThresholdConfig(alpha=0.1, lr=0.3, start_update=0)
  state = thr.init_thresholds(40, config)
  lam, m, v = (np.asarray(state.lam).copy(), np.zeros(40), np.zeros(40))
  for step, epoch in enumerate([0, 0, 1, 3]):
    sims, negatives, index = _batch(jax.random.key(step))
    state, lam_rows = thr.update_thresholds(state, sims, negatives, index, epoch, config)
    idx = np.asarray(index)
    above = np.sum(np.asarray(negatives) & (np.asarray(sims) > lam[idx][None, :, None]), axis=(0, 2))
    total = np.sum(np.asarray(negatives), axis=(0, 2))
    g = 0.1 - above / total
    lam[idx], m[idx], v[idx] = _reference_adam(lam[idx], m[idx], v[idx], g, 0.3, 0.9, 0.98, 1e-8,
                                               epoch + 1)
    np.testing.assert_allclose(state.lam, lam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(thr.moments(state).mu, m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(thr.moments(state).nu, v, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(lam_rows, lam[idx], rtol=1e-5, atol=1e-6)
  untouched = np.setdiff1d(np.arange(40), np.arange(8) * 3 % 40)
  assert np.all(np.asarray(state.lam)[untouched] == 1.0)
  assert np.all(np.asarray(thr.moments(state).mu)[untouched] == 0.0)


def test_per_sample_steps_counts_each_row_separately():
  config = thr.ThresholdConfig(alpha=0.1, lr=0.1, per_sample_steps=True)
  state = thr.init_thresholds(10, config)
  sims = jnp.full((1, 2, 4), 0.5)
  negatives = jnp.ones((1, 2, 4), bool)
  state, _ = thr.update_thresholds(state, sims, negatives, jnp.array([1, 2]), 7, config)
  state, _ = thr.update_thresholds(state, sims, negatives, jnp.array([2, 3]), 7, config)
  np.testing.assert_array_equal(thr.moments(state).count, [0, 1, 2, 1, 0, 0, 0, 0, 0, 0])
  # First update of a row: bias-corrected Adam step is exactly lr * sign(g) (t = 1).
  # Nothing is above lambda = 1, so g = alpha > 0 and lambda drops by lr.
  np.testing.assert_allclose(state.lam[1], 0.9, rtol=1e-6)
  # Row 2 had its second update: t = 2, so the corrected step is again exactly lr.
  np.testing.assert_allclose(state.lam[2], 0.8, rtol=1e-6)


def test_no_update_before_start_update_and_clamp():
  config = thr.ThresholdConfig(alpha=0.5, lr=5.0, start_update=2, start_mask=2)
  state = thr.init_thresholds(8, config)
  sims = jnp.full((1, 4, 4), 0.9)
  negatives = jnp.ones((1, 4, 4), bool)
  index = jnp.arange(4)
  before, _ = thr.update_thresholds(state, sims, negatives, index, 1, config)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), before, state))
  after, _ = thr.update_thresholds(state, -sims, negatives, index, 2, config)
  # g = 0.5 > 0 pushes lambda down by lr = 5: clamped to -1.
  np.testing.assert_array_equal(after.lam[:4], -1.0)


def test_clip_and_normalize_options_go_through_optax_chain():
  base = dict(alpha=0.05, lr=1.0, b1=0.0, b2=0.0)
  sims = jnp.full((1, 1, 4), 2.0)  # every negative above lambda: g = alpha - 1 = -0.95
  negatives = jnp.ones((1, 1, 4), bool)
  index = jnp.array([0])
  for extra, expected_g in [({}, -0.95), ({"clip_grad_mult": 2.0}, -0.1),
                            ({"clip_grad_mult": 2.0, "normalize_by_alpha": True}, -2.0)]:
    config = thr.ThresholdConfig(**base, **extra, lam_init=0.0)
    state, _ = thr.update_thresholds(thr.init_thresholds(1, config), sims, negatives, index, 0,
                                     config)
    np.testing.assert_allclose(thr.moments(state).mu, [expected_g], rtol=1e-6)


def test_init_quantile_matches_numpy_and_keeps_moments():
  config = thr.ThresholdConfig(alpha=0.13, init_quantile=True, start_update=1, start_mask=1)
  sims, negatives, index = _batch(jax.random.key(3))
  state = thr.init_thresholds(40, config)
  state, lam_rows = thr.update_thresholds(state, sims, negatives, index, 1, config)
  s, n = np.asarray(sims), np.asarray(negatives)
  expected = np.mean([[np.quantile(s[r, b][n[r, b]], 0.87) for b in range(8)] for r in range(2)],
                     axis=0)
  np.testing.assert_allclose(lam_rows, expected, rtol=1e-5, atol=1e-6)
  assert not np.any(thr.moments(state).mu)
  # Next epoch: an Adam step from the untouched moments.
  state2, _ = thr.update_thresholds(state, sims, negatives, index, 2, config)
  assert np.any(thr.moments(state2).mu)


@pytest.mark.parametrize("q", [0.0, 0.03, 0.5, 0.87, 0.9, 0.999, 1.0])
def test_batch_quantile_top_k_path_equals_numpy_and_full_sort(q):
  """The static-q top_k path must give numpy's linear quantile for every negative count."""
  key = jax.random.key(11)
  sims = jax.random.normal(key, (2, 12, 33))
  # Row counts 0, 1, 2, ... up to all 33 columns, so every rank the top_k must cover is hit.
  count = (jnp.arange(2 * 12).reshape(2, 12) * 3) % 34
  negatives = jnp.arange(33)[None, None, :] < count[..., None]
  negatives = jax.random.permutation(jax.random.key(2), negatives, axis=-1, independent=True)
  got = np.asarray(jax.jit(thr.batch_quantile, static_argnums=2)(sims, negatives, q))
  traced = np.asarray(jax.jit(thr.batch_quantile)(sims, negatives, jnp.float32(q)))  # sort path
  s, n = np.asarray(sims), np.asarray(negatives)
  rows = [[np.quantile(s[r, b][n[r, b]], q) if n[r, b].any() else np.nan for b in range(12)]
          for r in range(2)]
  expected = np.mean(rows, axis=0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, traced, rtol=1e-6, atol=1e-6)


def test_shared_threshold_pools_the_batch():
  config = thr.ThresholdConfig(alpha=0.25, lr=0.1, b1=0.0, b2=0.0)
  state = thr.init_thresholds(1, config)
  sims = jnp.array([[[0.9, 0.1], [0.1, 0.1]]])
  negatives = jnp.ones((1, 2, 2), bool)
  lam_before = jnp.array([0.5, 0.5])
  g = thr.threshold_grad(sims, negatives, lam_before, 0.25, shared=True)
  np.testing.assert_allclose(g, [0.25 - 1 / 4])
  state, rows = thr.update_thresholds(state, sims, negatives, jnp.array([5, 9]), 0, config,
                                      shared=True)
  assert state.lam.shape == (1,) and rows.shape == (2,) and rows[0] == rows[1]


def test_anchor_without_negatives_gets_zero_gradient():
  g = thr.threshold_grad(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3), bool), jnp.zeros(2), 0.1)
  np.testing.assert_array_equal(g, [0.0, 0.0])


@pytest.mark.parametrize("field,value", [("alpha", 0.0), ("alpha", 1.5), ("lr", 0.0),
                                         ("lam_init", 2.0), ("b2", 1.0)])
def test_config_rejects_bad_values_naming_the_field(field, value):
  with pytest.raises(ValueError, match=f"thresholds.{field}"):
    thr.ThresholdConfig(**{field: value})


def test_config_rejects_update_after_mask():
  with pytest.raises(ValueError, match="start_update=5 is after thresholds.start_mask=2"):
    thr.ThresholdConfig(start_update=5, start_mask=2)


def test_lambda_converges_to_dataset_quantile_and_beats_minibatch_quantile():
  """Random mini-batches from a fixed similarity structure: lambda -> exact (1 - alpha) quantile."""
  n, b, alpha = 256, 32, 0.1
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(8, 16))
  z = centers[rng.integers(0, 8, n)] + 0.7 * rng.normal(size=(n, 16))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  sims_full = jnp.asarray(z @ z.T, jnp.float32)
  exact = np.array([np.quantile(np.delete(z @ z[i], i), 1 - alpha) for i in range(n)])
  config = thr.ThresholdConfig(alpha=alpha, lr=0.02)
  negatives = ~jnp.eye(b, dtype=bool)[None]

  def step(carry, key):
    state, t = carry
    idx = jax.random.choice(key, n, (b,), replace=False)
    sims = sims_full[idx][:, idx][None]
    state, _ = thr.update_thresholds(state, sims, negatives, idx, t // (n // b), config)
    return (state, t + 1), (idx, thr.batch_quantile(sims, negatives, 1 - alpha))

  run = jax.jit(lambda s, keys: jax.lax.scan(step, (s, 0), keys))
  (state, _), (idx, fnd) = run(thr.init_thresholds(n, config),
                               jax.random.split(jax.random.key(0), 3000))
  glofnd_error = np.mean(np.abs(np.asarray(state.lam) - exact))
  fnd_error = np.mean(np.abs(np.asarray(fnd)[-300:] - exact[np.asarray(idx)[-300:]]))
  assert glofnd_error < 0.04, glofnd_error
  assert fnd_error > 2 * glofnd_error, (fnd_error, glofnd_error)
