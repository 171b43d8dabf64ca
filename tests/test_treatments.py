"""Treatments of detected false negatives (remove, attract, reweight) for every detector and loss.

Invariants: with nothing flagged every treatment is the plain loss (mode ``none``); ``reweight``
at a tiny ``tau_w`` is ``remove``; the gradients equal finite differences of the formulas in the
losses' docstrings, written again here in float64 NumPy; 8 fake devices give the 1-device step.
The O(batch) checks of the compiled treatment steps are in ``tests/test_hlo.py``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scaling_subprocess
from glofnd_jax import detection, losses, objectives, treatments
from glofnd_jax.config import image_text as image_text_config
from glofnd_jax.config import common as config_common
from glofnd_jax.config import unimodal as unimodal_config
from glofnd_jax import similarity as sim
from glofnd_jax import thresholds as thr

B, DIM = 8, 16
LOSSES = ("simclr", "sogclr", "v1", "v3")
THRESHOLD_MODES = ("glofnd", "glofnd_shared", "fnd")
DETECTORS = THRESHOLD_MODES + ("oracle",)


def _features(seed=0):
  rng = np.random.RandomState(seed)
  a = rng.normal(size=(B, DIM)).astype(np.float32)
  b = (a + 0.7 * rng.normal(size=(B, DIM))).astype(np.float32)
  return jnp.asarray(a), jnp.asarray(b)


def _objective(loss, mode, treatment, *, epoch=1, tau_w=0.05, labels=None, start_mask=0,
               lam_init=0.3, lr=0.05, seed=0):
  """Loss, feature gradients (and the logit scale's) and new ``u`` of one objective call."""
  tconfig = thr.ThresholdConfig(alpha=0.2, lr=lr, lam_init=lam_init, start_update=0,
                                start_mask=start_mask, eps=1e-14)
  a, b = _features(seed)
  index = jnp.arange(B) * 3
  if loss in ("simclr", "sogclr"):
    config = objectives.UnimodalConfig(loss=loss, mode=mode, thresholds=tconfig,
                                       treatment=treatment, tau_w=tau_w)
    state = objectives.init_unimodal_state(3 * B, config)
    fn = lambda x, y, ls: objectives.unimodal_objective(x, y, index, state, epoch, config, labels)
  else:
    config = objectives.BimodalConfig(version=loss, mode=mode, thresholds=tconfig,
                                      treatment=treatment, tau_w=tau_w)
    state = objectives.init_bimodal_state(3 * B, config)
    fn = lambda x, y, ls: objectives.bimodal_objective(x, y, index, index, state, epoch, ls,
                                                       config, labels)
  (value, aux), grads = jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(a, b, 14.0)
  if loss in ("simclr", "sogclr"):
    grads = grads[:2]  # the unimodal objectives do not use a logit scale
  return {"loss": value, "grads": grads, "u": jax.tree.leaves(aux.state.loss)}, aux


def _assert_same(actual, expected, **tol):
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    if tol:
      np.testing.assert_allclose(got, want, **tol)
    else:
      np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- the module

def _detected(mode="fnd", epoch=1, start_mask=0, labels=None):
  a, b = _features()
  sims = sim.unimodal_similarities(sim.l2_normalize(a), sim.l2_normalize(b))
  negatives = sim.unimodal_negatives(B)
  tconfig = thr.ThresholdConfig(alpha=0.2, lam_init=0.3, start_update=0, start_mask=start_mask)
  state = thr.init_thresholds(1 if mode == "glofnd_shared" else B, tconfig)
  col = None if labels is None else jnp.concatenate([labels, labels])
  found = detection.detect(mode, sims, negatives, jnp.arange(B), epoch, tconfig,
                           state if mode in detection.LEARNED_MODES else None, labels, col)
  return sims, negatives, found


@pytest.mark.parametrize("mode", DETECTORS)
def test_treat_shapes_ranges_and_disjoint_sets(mode):
  labels = jnp.arange(B) % 3
  sims, negatives, found = _detected(mode, labels=labels)
  assert (found.threshold_rows is None) == (mode == "oracle")
  if found.threshold_rows is not None:  # the exposed rows are what the keep-mask used
    np.testing.assert_array_equal(detection.keep_mask(sims, negatives, found.threshold_rows),
                                  found.keep)
  flagged = negatives & ~found.keep
  assert jnp.any(flagged)
  removed = treatments.treat("remove", sims, negatives, found.keep, found.threshold_rows)
  attracted = treatments.treat("attract", sims, negatives, found.keep, found.threshold_rows)
  reweighted = treatments.treat("reweight", sims, negatives, found.keep, found.threshold_rows)
  for treated in (removed, attracted, reweighted):
    assert treated.neg_weight.dtype == jnp.float32 and treated.neg_weight.shape == sims.shape
    assert jnp.all((treated.neg_weight >= 0) & (treated.neg_weight <= 1))
    assert not jnp.any(jnp.where(negatives, 0.0, treated.neg_weight))
  np.testing.assert_array_equal(removed.neg_weight, found.keep.astype(np.float32))
  assert removed.attract is None and reweighted.attract is None
  np.testing.assert_array_equal(attracted.attract, flagged)
  np.testing.assert_array_equal(attracted.neg_weight, removed.neg_weight)
  if mode == "oracle":  # no threshold: hard weights
    np.testing.assert_array_equal(reweighted.neg_weight, removed.neg_weight)
  else:  # soft: flagged negatives weigh less than 1/2, kept ones at least 1/2
    w = reweighted.neg_weight
    assert jnp.all(jnp.where(flagged, w, 0.0) < 0.5) and jnp.all(jnp.where(found.keep, w, 1) >= .5)
    assert jnp.any((w > 0.01) & (w < 0.99))


@pytest.mark.parametrize("mode", THRESHOLD_MODES)
def test_before_start_mask_the_thresholds_are_infinite_and_every_weight_is_one(mode):
  sims, negatives, found = _detected(mode, epoch=0, start_mask=1)
  assert jnp.all(jnp.isinf(found.threshold_rows))
  for name in treatments.TREATMENTS:
    treated = treatments.treat(name, sims, negatives, found.keep, found.threshold_rows)
    np.testing.assert_array_equal(treated.neg_weight, negatives.astype(np.float32))
    assert treated.attract is None or not jnp.any(treated.attract)


def test_treatment_is_validated_with_one_clear_line():
  with pytest.raises(ValueError, match="treatment='atract' is unknown; choose one of remove"):
    objectives.UnimodalConfig(treatment="atract")
  with pytest.raises(ValueError, match="tau_w=0.0 is invalid"):
    objectives.BimodalConfig(treatment="reweight", tau_w=0.0)
  config = unimodal_config.base_config()
  config.glofnd.treatment = "soft"
  with pytest.raises(ValueError, match=r"^config\.glofnd\.treatment='soft' is invalid: choose "):
    unimodal_config.unimodal_objective_config(config)
  config.glofnd.treatment, config.glofnd.tau_w = "reweight", -1.0
  with pytest.raises(ValueError, match=r"config\.glofnd\.tau_w=-1\.0 is invalid"):
    unimodal_config.unimodal_objective_config(config)


def test_config_passes_treatment_and_tau_w():
  unimodal, clip = unimodal_config.base_config(), image_text_config.clip_base_config()
  assert unimodal_config.unimodal_objective_config(unimodal).treatment == "remove"
  assert image_text_config.bimodal_objective_config(clip).treatment == "remove"
  for config in (unimodal, clip):
    config.glofnd.treatment, config.glofnd.tau_w = "reweight", 0.02
  for built in (unimodal_config.unimodal_objective_config(unimodal),
                image_text_config.bimodal_objective_config(clip)):
    assert (built.treatment, built.tau_w) == ("reweight", 0.02)


# ----------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("loss", LOSSES)
def test_nothing_flagged_every_treatment_equals_none(loss):
  """Three ways to flag nothing: before start_mask (every detector), an oracle whose labels are
  all distinct, and thresholds above every similarity (lambda = 1 learned at lr 1e-8)."""
  none, _ = _objective(loss, "none", "remove")
  for treatment in treatments.TREATMENTS:
    for mode in DETECTORS:
      early, aux = _objective(loss, mode, treatment, start_mask=5, labels=jnp.arange(B) % 3)
      _assert_same(early, none)
    distinct, _ = _objective(loss, "oracle", treatment, labels=jnp.arange(B))
    _assert_same(distinct, none)
    high, aux = _objective(loss, "glofnd", treatment, lam_init=1.0, lr=1e-8, tau_w=1e-3)
    flagged = [v for k, v in aux.metrics.items() if k.endswith("flagged_fraction")]
    assert flagged and all(v == 0 for v in flagged)
    _assert_same(high, none, **({"rtol": 1e-6, "atol": 1e-7} if treatment == "reweight" else {}))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("mode", DETECTORS)
def test_reweight_at_tiny_tau_w_equals_remove(loss, mode):
  labels = jnp.arange(B) % 3
  removed, aux = _objective(loss, mode, "remove", labels=labels)
  tiny, _ = _objective(loss, mode, "reweight", tau_w=1e-7, labels=labels)
  _assert_same(tiny, removed, rtol=1e-6, atol=1e-7)
  assert all(v < 1 for k, v in aux.metrics.items() if k.endswith("kept_fraction"))
  if mode != "oracle":  # a usable tau_w is not removal: the comparison above can fail
    soft, soft_aux = _objective(loss, mode, "reweight", tau_w=0.05, labels=labels)
    assert not np.allclose(soft["grads"][0], removed["grads"][0], rtol=1e-3, atol=1e-4)
    means = [v for k, v in soft_aux.metrics.items() if k.endswith("weight_mean")]
    assert means and all(0 < v < 1 for v in means)


@pytest.mark.parametrize("loss", LOSSES)
def test_attract_differs_from_remove_and_reports_attracted_counts(loss):
  removed, _ = _objective(loss, "fnd", "remove")
  attracted, aux = _objective(loss, "fnd", "attract")
  # (FastCLIP's surrogate value is 2 at u = g whatever the negatives; its gradient is not.)
  assert not np.allclose(attracted["grads"][0], removed["grads"][0], rtol=1e-3, atol=1e-4)
  fractions = [v for k, v in aux.metrics.items() if k.endswith("attracted_fraction")]
  kept = [v for k, v in aux.metrics.items() if k.endswith("kept_fraction")]
  assert fractions and all(v > 0 for v in fractions)
  np.testing.assert_allclose(np.add(fractions, kept), 1.0, rtol=1e-6)  # every negative is one
  counts = [v for k, v in aux.per_anchor.items() if k.startswith("attracted")]
  assert counts and all(int(np.sum(c)) > 0 for c in counts)


# ----------------------------------------------------------------------------- gradients

def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_sets(attract, weight):
  attract = np.zeros(weight.shape, bool) if attract is None else np.asarray(attract)
  return attract, attract.sum(-1)


def reference_unimodal(loss, h1, h2, weight, attract, temperature):
  """The docstring formulas of SimCLR and SogCLR (with u the batch estimate, gamma = 1)."""
  a, b = _np_normalize(h1), _np_normalize(h2)
  s = np.stack([np.concatenate([a @ b.T, a @ a.T], 1), np.concatenate([b @ a.T, b @ b.T], 1)])
  rows = np.arange(h1.shape[0])
  positive = s[:, rows, rows]
  attract, n_attract = _np_sets(attract, weight)
  positive_mean = (positive + np.sum(attract * s, -1)) / (1 + n_attract)
  total = weight.sum(-1)
  weighted = np.sum(weight * np.exp(s / temperature), -1)
  if loss == "sogclr":
    per_row = -positive_mean + temperature * np.log(weighted / total)
  else:
    n = 2 * h1.shape[0] - 2
    denominator = (np.exp(positive / temperature) + np.sum(attract * np.exp(s / temperature), -1)
                   + (n - n_attract) / total * weighted)
    per_row = -positive_mean / temperature + np.log(denominator)
  return np.mean(np.sum(per_row, 0))


def reference_fastclip(version, img, txt, scale, w_img, w_txt, a_img, a_txt, scale0, log_u,
                       rho=6.5):
  """FastCLIP's objective whose gradient the surrogate has at u = g (gamma = 1)."""
  x, t = _np_normalize(img), _np_normalize(txt)

  def log_g(s, weight, attract):
    attract, n_attract = _np_sets(attract, weight)
    d = (np.diag(s) + np.sum(attract * s, -1)) / (1 + n_attract)
    return np.log(np.sum(weight * np.exp(scale * (s - d[:, None])), -1) / weight.sum(-1))

  objective = np.mean(log_g(x @ t.T, w_img, a_img) + log_g(t @ x.T, w_txt, a_txt))
  if version == "v1":
    return objective
  return objective / scale0 + rho / scale + log_u / (2 * scale)


def _numeric_grads(fn, args, eps=1e-5):
  grads = []
  for k, arg in enumerate(args):
    arg = np.asarray(arg, np.float64)
    grad = np.zeros_like(arg)
    for pos in np.ndindex(arg.shape):
      shift = np.zeros_like(arg)
      shift[pos] = eps
      plus = [a if j != k else arg + shift for j, a in enumerate(args)]
      minus = [a if j != k else arg - shift for j, a in enumerate(args)]
      grad[pos] = (fn(*plus) - fn(*minus)) / (2 * eps)
    grads.append(grad)
  return grads


def _first_row(x):
  return None if x is None else np.asarray(x)[0]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("treatment", treatments.TREATMENTS)
def test_gradients_match_finite_differences(loss, treatment):
  """Weights and attracted sets from FND at the base point, held fixed (they are detached)."""
  h1, h2 = _features(1)
  f64 = lambda x: np.asarray(x, np.float64)
  tconfig = thr.ThresholdConfig(alpha=0.2, start_update=0, start_mask=0)
  index = jnp.arange(B)
  if loss in ("simclr", "sogclr"):
    sims = sim.unimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
    negatives = sim.unimodal_negatives(B)
    found = detection.detect("fnd", sims, negatives, index, 1, tconfig)
    treated = treatments.treat(treatment, sims, negatives, found.keep, found.threshold_rows)
    state = losses.init_sogclr(B) if loss == "sogclr" else losses.SimCLRState()
    loss_fn = losses.UNIMODAL_LOSSES[loss]
    analytic = jax.grad(lambda a, b: loss_fn(a, b, index, state, treated.neg_weight,
                                             temperature=0.1, gamma=0.9,
                                             attract=treated.attract)[0], argnums=(0, 1))(h1, h2)
    weight, attract = f64(treated.neg_weight), treated.attract
    numeric = _numeric_grads(lambda a, b: reference_unimodal(loss, a, b, weight, attract, 0.1),
                             [f64(h1), f64(h2)])
  else:
    s_img, s_txt = sim.bimodal_similarities(sim.l2_normalize(h1), sim.l2_normalize(h2))
    negatives = sim.bimodal_negatives(B)
    treated = []
    for s in (s_img, s_txt):
      found = detection.detect("fnd", s, negatives, index, 1, tconfig)
      treated.append(treatments.treat(treatment, s, negatives, found.keep, found.threshold_rows))
    state = losses.init_fastclip(B)
    scale = 14.0

    def loss_fn(x, t, ls):
      return losses.fastclip_loss(x, t, index, index, state, treated[0].neg_weight,
                                  treated[1].neg_weight, logit_scale=ls, gamma=1.0,
                                  version=loss, attract_img=treated[0].attract,
                                  attract_txt=treated[1].attract)

    analytic = jax.grad(lambda *args: loss_fn(*args)[0], argnums=(0, 1, 2))(h1, h2, scale)
    if loss == "v1":
      analytic = analytic[:2]  # the constant temperature is not a parameter of v1
    metrics = loss_fn(h1, h2, scale)[1][1]
    log_u = float(np.mean(np.log(f64(metrics["g_img"])) + np.log(f64(metrics["g_txt"]))))
    fixed = (f64(treated[0].neg_weight[0]), f64(treated[1].neg_weight[0]),
             _first_row(treated[0].attract), _first_row(treated[1].attract), scale, log_u)
    args = [f64(h1), f64(h2)] + ([np.float64(scale)] if loss == "v3" else [])
    numeric = _numeric_grads(
        lambda x, t, ls=scale: reference_fastclip(loss, x, t, ls, *fixed), args)
  if treatment == "attract":  # the attracted sets are not empty
    sets = [treated.attract] if isinstance(treated, treatments.Treated) else [
        t.attract for t in treated]
    assert all(jnp.any(a) for a in sets)
  for got, want in zip(analytic, numeric):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * np.max(np.abs(want)))


# ----------------------------------------------------------------------------- 8 devices

@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  out = tmp_path_factory.mktemp("treatments") / "results.npz"
  scaling_subprocess.run("treatments", out, devices=8, timeout=300)
  return dict(np.load(out)), json.loads(out.with_suffix(".json").read_text())


def test_eight_devices_equal_one_for_each_treatment(sharded):
  arrays, cases = sharded
  assert {c["treatment"] for c in cases.values()} == {"attract", "reweight"}
  assert {c["loss"] for c in cases.values()} >= {"sogclr", "simclr", "fastclip_v3"}
  for case, spec in cases.items():
    keys = sorted(k for k in arrays if k.startswith(f"{case}/d8/"))
    assert keys, case
    for key in keys:
      np.testing.assert_allclose(arrays[key], arrays[key.replace("/d8/", "/d1/", 1)],
                                 rtol=1e-5, atol=1e-6, err_msg=key)
    # The comparison covers an active treatment, not the plain loss.
    name = "attracted_fraction" if spec["treatment"] == "attract" else "weight_mean"
    active = [arrays[k] for k in keys if f"/metric/" in k and name in k and k.endswith("/2")]
    assert active and all(0 < v < 1 for v in active), (case, name, active)
