"""Masks, detection modes, diagnostics and the all-flagged edge case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import detection, losses, objectives, per_sample
from glofnd_jax import similarity as sim
from glofnd_jax import thresholds as thr


def _views(key, b=12, d=6):
  k1, k2, k3 = jax.random.split(key, 3)
  base = jax.random.normal(k1, (b, d))
  return (base + 0.3 * jax.random.normal(k2, (b, d)), base + 0.3 * jax.random.normal(k3, (b, d)))


@pytest.mark.parametrize("mode", detection.MODES)
def test_self_and_positive_never_kept_nor_flagged(mode):
  h1, h2 = _views(jax.random.key(0))
  b = h1.shape[0]
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  negatives = sim.unimodal_negatives(b)
  config = thr.ThresholdConfig(alpha=0.3, lam_init=-1.0)
  state = thr.init_thresholds(1 if mode == "glofnd_shared" else b, config)
  labels = jnp.arange(b) % 3
  found = detection.detect(mode, sims, negatives, jnp.arange(b), 0, config, state, labels,
                           jnp.concatenate([labels, labels]))
  flagged = negatives & ~found.below
  positions = np.zeros((2, b, 2 * b), bool)
  positions[:, np.arange(b), np.arange(b)] = True
  positions[:, np.arange(b), b + np.arange(b)] = True
  assert not np.any(np.asarray(found.keep)[positions])
  assert not np.any(np.asarray(flagged)[positions])
  assert not np.any(np.asarray(found.keep) & ~np.asarray(negatives))


def test_keep_is_s_at_or_below_lambda_and_all_before_start_mask():
  sims = jnp.array([[[0.2, 0.5, 0.7]]])
  negatives = jnp.ones((1, 1, 3), bool)
  np.testing.assert_array_equal(detection.keep_mask(sims, negatives, jnp.array([0.5])),
                                [[[True, True, False]]])
  config = thr.ThresholdConfig(alpha=0.3, lam_init=0.5, start_update=3, start_mask=3)
  state = thr.init_thresholds(1, config)
  early = detection.detect("glofnd", sims, negatives, jnp.array([0]), 2, config, state)
  assert np.all(early.keep) and not np.all(early.below)


def test_oracle_removes_same_label_and_fnd_flags_alpha_fraction():
  h1, h2 = _views(jax.random.key(1), b=32)
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  negatives = sim.unimodal_negatives(32)
  labels = jnp.arange(32) % 4
  cols = jnp.concatenate([labels, labels])
  config = thr.ThresholdConfig(alpha=0.1)
  oracle = detection.detect("oracle", sims, negatives, jnp.arange(32), 0, config,
                            row_labels=labels, col_labels=cols)
  same = np.asarray(cols)[None, None, :] == np.asarray(labels)[None, :, None]
  np.testing.assert_array_equal(oracle.keep, np.asarray(negatives) & ~same)
  np.testing.assert_allclose(oracle.metrics["fn_precision"], 1.0)
  np.testing.assert_allclose(oracle.metrics["fn_recall"], 1.0)
  fnd = detection.detect("fnd", sims, negatives, jnp.arange(32), 0, config)
  # The threshold is the mean of the two views' batch quantiles: about alpha is flagged.
  assert abs(float(fnd.metrics["flagged_fraction"]) - 0.1) < 0.02
  quantile = thr.batch_quantile(sims, negatives, 0.9)
  np.testing.assert_array_equal(fnd.keep, detection.keep_mask(sims, negatives, quantile))
  with pytest.raises(ValueError, match="oracle"):
    detection.detect("oracle", sims, negatives, jnp.arange(32), 0, config)
  with pytest.raises(ValueError, match="unknown"):
    detection.detect("glofnd_typo", sims, negatives, jnp.arange(32), 0, config)


@pytest.mark.parametrize("mode", ["glofnd", "fnd", "oracle"])
def test_batch_quantile_metric_is_opt_in_except_for_fnd(mode):
  h1, h2 = _views(jax.random.key(4), b=16)
  sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
  negatives = sim.unimodal_negatives(16)
  labels = jnp.arange(16) % 4
  config = thr.ThresholdConfig(alpha=0.2)
  state = thr.init_thresholds(16, config)
  args = (mode, sims, negatives, jnp.arange(16), 0, config, state, labels,
          jnp.concatenate([labels, labels]))
  expected = np.nanmean(thr.batch_quantile(sims, negatives, 0.8))
  default = detection.detect(*args).metrics
  assert ("batch_quantile_mean" in default) == (mode == "fnd")
  with_metric = detection.detect(*args, quantile_metric=True).metrics
  np.testing.assert_allclose(with_metric["batch_quantile_mean"], expected, rtol=1e-6)


def test_precision_recall_match_brute_force():
  rng = np.random.default_rng(0)
  sims = jnp.asarray(rng.uniform(-1, 1, (2, 10, 20)), jnp.float32)
  negatives = jnp.asarray(rng.random((2, 10, 20)) < 0.9)
  below = negatives & (sims <= 0.4)
  rows, cols = jnp.asarray(rng.integers(0, 3, 10)), jnp.asarray(rng.integers(0, 3, 20))
  out = detection.diagnostics(sims, negatives, below, below, 0.1, rows, cols)
  s, n, r, c = map(np.asarray, (sims, negatives, rows, cols))
  flagged = n & (s > 0.4)
  same = n & (c[None, None, :] == r[None, :, None])
  np.testing.assert_allclose(out["fn_precision"], (flagged & same).sum() / flagged.sum(), rtol=1e-6)
  np.testing.assert_allclose(out["fn_recall"], (flagged & same).sum() / same.sum(), rtol=1e-6)
  np.testing.assert_allclose(out["kept_fraction"], (n & (s <= 0.4)).sum() / n.sum(), rtol=1e-6)


@pytest.mark.parametrize("loss", ["sogclr", "simclr"])
def test_all_negatives_flagged_is_finite(loss):
  """lambda at -1 flags every negative: loss, gradients and u stay finite (defined behaviour)."""
  b = 6
  tconfig = thr.ThresholdConfig(alpha=0.5, lam_init=-1.0, lr=1e-9, start_update=0, start_mask=0)
  config = objectives.UnimodalConfig(loss=loss, mode="glofnd", thresholds=tconfig)
  state = objectives.init_unimodal_state(b, config)
  h1, h2 = _views(jax.random.key(2), b=b)
  fn = lambda a, c: objectives.unimodal_objective(a, c, jnp.arange(b), state, 0, config)
  (value, aux), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h1, h2)
  assert np.all(aux.per_anchor["kept"] == 0)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
  for leaf in jax.tree.leaves(aux.state):
    assert np.all(np.isfinite(leaf))
  # Only the positive term is left: loss = -(mean positive cosine summed over views) for SogCLR.
  z1, z2 = sim.l2_normalize(h1), sim.l2_normalize(h2)
  if loss == "sogclr":
    np.testing.assert_allclose(value, -2 * jnp.mean(jnp.sum(z1 * z2, -1)), rtol=1e-5)
    np.testing.assert_array_equal(aux.state.loss[0].u, 0.0)  # u unchanged: no information
  else:
    np.testing.assert_allclose(value, 0.0, atol=1e-6)


def test_all_flagged_fastclip_is_finite():
  b = 5
  tconfig = thr.ThresholdConfig(alpha=0.5, lam_init=-1.0, lr=1e-9, eps=1e-14)
  config = objectives.BimodalConfig(version="v3", thresholds=tconfig, gamma_decay_epochs=2)
  state = objectives.init_bimodal_state(b, config)
  img, txt = _views(jax.random.key(4), b=b)
  fn = lambda x, t, ls: objectives.bimodal_objective(x, t, jnp.arange(b), jnp.arange(b), state, 1,
                                                     ls, config)
  (value, aux), grads = jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(img, txt, 14.0)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(aux.state))


def test_several_alphas_average_their_losses_with_separate_state():
  b = 8
  h1, h2 = _views(jax.random.key(5), b=b)
  base = thr.ThresholdConfig(alpha=0.1, lr=0.5, start_update=0, start_mask=0)
  multi = objectives.UnimodalConfig(thresholds=base, alphas=(0.1, 0.3))
  state = objectives.init_unimodal_state(20, multi)
  index = jnp.arange(b) * 2
  loss, aux = objectives.unimodal_objective(h1, h2, index, state, 1, multi)
  singles = []
  for k, alpha in enumerate((0.1, 0.3)):
    single = objectives.UnimodalConfig(thresholds=thr.ThresholdConfig(
        alpha=alpha, lr=0.5, start_update=0, start_mask=0))
    one = objectives.init_unimodal_state(20, single)
    value, one_aux = objectives.unimodal_objective(h1, h2, index, one, 1, single)
    singles.append(value)
    np.testing.assert_allclose(aux.state.thresholds[k].lam, one_aux.state.thresholds[0].lam)
    np.testing.assert_allclose(aux.state.loss[k].u, one_aux.state.loss[0].u)
  np.testing.assert_allclose(loss, np.mean(singles), rtol=1e-6)
  assert "kept_fraction@0.3" in aux.metrics


def test_duplicate_index_last_occurrence_wins_and_out_of_range():
  values = jnp.zeros(5)
  out = per_sample.scatter(values, jnp.array([1, 3, 1]), jnp.array([10.0, 30.0, 11.0]))
  np.testing.assert_array_equal(out, [0, 11, 0, 30, 0])
  dropped = per_sample.scatter(values, jnp.array([7, 2]), jnp.array([1.0, 2.0]))
  np.testing.assert_array_equal(dropped, [0, 0, 2, 0, 0])
  assert np.isnan(per_sample.gather(values, jnp.array([9]))[0])
  with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
    per_sample.check_indices(np.array([0, 5]), 5)
  with pytest.raises(ValueError, match="integers"):
    per_sample.check_indices(np.array([0.5]), 5)


def test_cosine_gamma_schedule():
  values = [float(losses.cosine_gamma(e, 0.2, 4)) for e in range(6)]
  expected = [1.0] + [0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in (1, 2, 3)] + [0.2, 0.2]
  np.testing.assert_allclose(values, expected, rtol=1e-6)
  assert float(losses.cosine_gamma(3, 0.2, 4, "constant")) == pytest.approx(0.2)


def test_quantile_metric_config_reaches_both_objectives():
  from glofnd_jax.config import common as config_common
  from glofnd_jax.config import image_text as image_text_config  # pylint: disable=g-import-not-at-top
  from glofnd_jax.config import unimodal as unimodal_config
  unimodal, clip = unimodal_config.base_config(), image_text_config.clip_base_config()
  assert not unimodal_config.unimodal_objective_config(unimodal).quantile_metric
  assert not image_text_config.bimodal_objective_config(clip).quantile_metric
  unimodal.glofnd.quantile_metric = clip.glofnd.quantile_metric = True
  assert unimodal_config.unimodal_objective_config(unimodal).quantile_metric
  assert image_text_config.bimodal_objective_config(clip).quantile_metric
  with pytest.raises(KeyError, match="glofnd.alpah"):
    config_common.glofnd_section(alpah=0.1)
