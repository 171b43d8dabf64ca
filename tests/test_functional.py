"""The functional API composes with jit, grad and vmap, and has no Python-side effects."""

import jax
import jax.numpy as jnp
import numpy as np

import glofnd_jax as gj


def _setup(loss="sogclr", mode="glofnd", n=32, b=8):
  config = gj.UnimodalConfig(loss=loss, mode=mode, thresholds=gj.ThresholdConfig(
      alpha=0.2, lr=0.2, start_update=0, start_mask=0))
  state = gj.init_unimodal_state(n, config)
  k1, k2 = jax.random.split(jax.random.key(0))
  h1 = jax.random.normal(k1, (b, 5))
  h2 = h1 + 0.2 * jax.random.normal(k2, (b, 5))
  return config, state, h1, h2, jnp.arange(b) * 3


def test_jit_equals_eager_and_tracing_has_no_side_effects():
  config, state, h1, h2, index = _setup()
  fn = lambda h1, h2, state, epoch: gj.unimodal_objective(h1, h2, index, state, epoch, config)
  eager_loss, eager_aux = fn(h1, h2, state, 1)
  jit_loss, jit_aux = jax.jit(fn)(h1, h2, state, 1)
  np.testing.assert_allclose(jit_loss, eager_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jit_aux.state,
               eager_aux.state)
  # Pure: the input state is not modified, and a second trace gives the same program.
  assert np.all(np.asarray(state.thresholds[0].lam) == 1.0)
  assert str(jax.make_jaxpr(fn)(h1, h2, state, 1)) == str(jax.make_jaxpr(fn)(h1, h2, state, 1))


def test_epoch_is_traced_no_recompile_across_epochs():
  config, state, h1, h2, index = _setup()
  step = jax.jit(lambda s, e: gj.unimodal_objective(h1, h2, index, s, e, config)[1].state)
  for epoch in range(4):
    state = step(state, epoch)
  assert step._cache_size() == 1


def _directional_fd(fn, x, eps=1e-3):
  direction = jax.random.normal(jax.random.key(3), x.shape)
  numeric = (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)
  return jnp.vdot(jax.grad(fn)(x), direction), numeric


def test_simclr_grad_matches_finite_differences():
  config, state, h1, h2, index = _setup(loss="simclr", mode="none")
  analytic, numeric = _directional_fd(
      lambda h: gj.unimodal_objective(h, h2, index, state, 1, config)[0], h1)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-3)


def test_sogclr_surrogate_gradient_is_gradient_of_its_objective():
  """With fresh u (gamma = 1) the detached-weight surrogate's gradient equals the gradient of
  sum_views [-s_pos + T log(mean_j exp(s_ij / T))]: the SogCLR objective it stands for."""
  config, state, h1, h2, index = _setup(loss="sogclr", mode="none")

  def objective(h):
    sims = gj.similarity.unimodal_similarities(gj.similarity.l2_normalize(h),
                                               gj.similarity.l2_normalize(h2))
    negatives = gj.similarity.unimodal_negatives(h.shape[0])
    k = jnp.sum(negatives, -1)
    lse = jax.nn.logsumexp(jnp.where(negatives, sims / config.temperature, -jnp.inf), axis=-1)
    log_mean = lse - jnp.log(k)
    per_anchor = -gj.similarity.unimodal_positives(sims) + config.temperature * log_mean
    return jnp.mean(jnp.sum(per_anchor, axis=0))

  surrogate = lambda h: gj.unimodal_objective(h, h2, index, state, 1, config)[0]
  np.testing.assert_allclose(jax.grad(surrogate)(h1), jax.grad(objective)(h1), rtol=1e-4,
                             atol=1e-6)
  analytic, numeric = _directional_fd(objective, h1)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-3)


def test_vmap_over_independent_problems():
  config, state, h1, h2, index = _setup()
  batched_h1 = jnp.stack([h1, h1 * 2.0, -h1])
  batched_state = jax.tree.map(lambda x: jnp.stack([x] * 3), state)
  fn = lambda h, s: gj.unimodal_objective(h, h2, index, s, 1, config)
  losses, aux = jax.vmap(fn)(batched_h1, batched_state)
  for k in range(3):
    single, single_aux = fn(batched_h1[k], state)
    np.testing.assert_allclose(losses[k], single, rtol=1e-5)
    np.testing.assert_allclose(aux.state.thresholds[0].lam[k], single_aux.state.thresholds[0].lam,
                               rtol=1e-6)


def test_threshold_update_cost_is_batch_sized():
  """The jaxpr of a threshold step never materialises an array larger than N itself."""
  config = gj.ThresholdConfig(alpha=0.1)
  n, b = 1_000_003, 8
  state = gj.init_thresholds(n, config)
  sims = jnp.zeros((2, b, 2 * b))
  negatives = gj.similarity.unimodal_negatives(b)
  jaxpr = jax.make_jaxpr(lambda s, i: gj.update_thresholds(s, sims, negatives, i, 1, config))(
      state, jnp.arange(b))
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      shape = getattr(var.aval, "shape", ())
      # Only the scatters' outputs (the updated full arrays) may be N-sized; nothing bigger.
      assert int(np.prod(shape)) <= n
      if int(np.prod(shape)) == n:
        assert eqn.primitive.name in ("scatter", "broadcast_in_dim"), eqn.primitive.name
