"""Replays the authors' PyTorch step sequences (tests/golden) through our objectives.

Every ``*.npz`` in the golden folder (``$GLOFND_GOLDEN_DIR`` or ``tests/golden``; bimodal cases in
its ``bimodal/`` subfolder) is one case; all of them must pass, and an empty or missing folder
fails. Tolerances: rtol 1e-4, atol 1e-5 for states and losses (unimodal), the bimodal README's
suggested tolerances for bimodal, and atol 1e-5 * max|grad| for feature gradients.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import objectives, thresholds as thr

jax.config.update("jax_enable_x64", False)

GOLDEN_DIR = pathlib.Path(os.environ.get("GLOFND_GOLDEN_DIR",
                                         pathlib.Path(__file__).parent / "golden"))


def _cases(folder: pathlib.Path):
  return sorted(folder.glob("*.npz")) if folder.is_dir() else []


UNIMODAL = _cases(GOLDEN_DIR)
BIMODAL = _cases(GOLDEN_DIR / "bimodal")


def test_golden_folders_are_not_empty():
  assert UNIMODAL, f"no unimodal golden cases in {GOLDEN_DIR}"
  assert BIMODAL, f"no bimodal golden cases in {GOLDEN_DIR / 'bimodal'}"


def _close(actual, expected, name, step, rtol=1e-4, atol=1e-5):
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol,
                             err_msg=f"{name} differs at step {step}")


def _grad_close(actual, expected, name, step):
  scale = float(np.max(np.abs(expected))) or 1.0
  _close(actual, expected, name, step, rtol=1e-4, atol=1e-5 * scale)


def unimodal_config(meta) -> objectives.UnimodalConfig:
  tconfig = thr.ThresholdConfig(
      alpha=meta["alpha"], lr=meta["lr_lda"], b1=meta["beta1"], b2=meta["beta2"],
      eps=meta["eps"], lam_init=meta["lam_init"], clip_grad_mult=meta["clip_grad_mult"],
      init_quantile=meta["init_quantile"], start_update=meta["start_update"],
      start_mask=meta["lda_start"])
  loss = {"dcl": "sogclr", "cl": "simclr"}[meta["loss_type"]]
  return objectives.UnimodalConfig(loss=loss, mode="glofnd", thresholds=tconfig,
                                   temperature=meta["T"], gamma=meta["gamma"])


@pytest.mark.parametrize("path", UNIMODAL, ids=lambda p: f"golden-{p.stem}")
def test_golden_unimodal(path):
  data = np.load(path)
  meta = json.loads(str(data["meta"]))
  config = unimodal_config(meta)
  state = objectives.init_unimodal_state(meta["N"], config)

  @jax.jit
  def step(h1, h2, index, state, epoch):
    fn = lambda a, b: objectives.unimodal_objective(a, b, index, state, epoch, config)
    return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h1, h2)

  for s in range(data["loss"].shape[0]):
    (loss, aux), (g1, g2) = step(data["h1"][s], data["h2"][s], data["index"][s].astype(np.int32),
                                 state, int(data["epoch"][s]))
    state = aux.state
    _close(loss, data["loss"][s], "loss", s)
    _grad_close(g1, data["grad_h1"][s], "grad_h1", s)
    _grad_close(g2, data["grad_h2"][s], "grad_h2", s)
    adam = thr.moments(state.thresholds[0])
    _close(state.thresholds[0].lam, data["lam"][s], "lam", s)
    _close(adam.mu, data["m"][s], "m", s, atol=1e-5 * max(1.0, np.abs(data["m"][s]).max()))
    _close(adam.nu, data["v"][s], "v", s)
    if config.loss == "sogclr":
      _close(state.loss[0].u, data["u"][s], "u", s)
    else:
      assert not np.any(data["u"][s]), "SimCLR golden u should be all zero"
    np.testing.assert_array_equal(aux.per_anchor["kept"][0], data["kept_a"][s], f"kept_a step {s}")
    np.testing.assert_array_equal(aux.per_anchor["kept"][1], data["kept_b"][s], f"kept_b step {s}")


def bimodal_config(meta) -> objectives.BimodalConfig:
  tconfig = thr.ThresholdConfig(
      alpha=meta["alpha"], lr=meta["lr_lda"], b1=meta["beta1"], b2=meta["beta2"],
      eps=meta["lda_eps"], lam_init=meta["lam_init"], clip_grad_mult=meta["clip_grad_mult"],
      init_quantile=meta["init_quantile"], start_update=meta["start_update"],
      start_mask=meta["lda_start"])
  return objectives.BimodalConfig(
      version=meta["scheme"], mode="glofnd", thresholds=tconfig, rho=meta["rho"],
      eps=meta["u_eps"], gamma_min=meta["gamma_min"],
      gamma_decay_epochs=meta["gamma_decay_epochs"], gamma_schedule=meta["gamma_schedule"])


@pytest.mark.parametrize("path", BIMODAL, ids=lambda p: f"golden-bimodal-{p.stem}")
def test_golden_bimodal(path):
  data = np.load(path)
  meta = json.loads(str(data["meta"]))
  config = bimodal_config(meta)
  state = objectives.init_bimodal_state(meta["N"], config)

  @jax.jit
  def step(img, txt, index_img, index_txt, state, epoch, log_logit_scale):
    def fn(img, txt, p):
      return objectives.bimodal_objective(img, txt, index_img, index_txt, state, epoch,
                                          jnp.exp(p), config)
    return jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(img, txt, log_logit_scale)

  tol = dict(rtol=1e-4, atol=1e-6)
  for s in range(data["loss"].shape[0]):
    (loss, aux), (g_img, g_txt, g_p) = step(
        data["img_raw"][s], data["txt_raw"][s], data["index_img"][s].astype(np.int32),
        data["index_txt"][s].astype(np.int32), state, int(data["epoch"][s]),
        data["log_logit_scale"][s])
    state = aux.state
    np.testing.assert_allclose(aux.metrics["gamma"], data["gamma"][s], rtol=1e-6)
    _close(loss, data["loss"][s], "loss", s, **tol)
    _grad_close(g_img, data["grad_img"][s], "grad_img", s)
    _grad_close(g_txt, data["grad_txt"][s], "grad_txt", s)
    _close(g_p, data["grad_log_logit_scale"][s], "grad_log_logit_scale", s, **tol)
    _close(aux.per_anchor["g_img"], data["g_im"][s], "g_im", s, **tol)
    _close(aux.per_anchor["g_txt"], data["g_tt"][s], "g_tt", s, **tol)
    _close(state.loss[0].u_img, data["u_im"][s], "u_im", s, **tol)
    _close(state.loss[0].u_txt, data["u_tt"][s], "u_tt", s, **tol)
    for mod, thresholds in (("im", state.thresholds_img[0]), ("tt", state.thresholds_txt[0])):
      adam = thr.moments(thresholds)
      _close(thresholds.lam, data[f"lam_{mod}"][s], f"lam_{mod}", s, **tol)
      m_ref = data[f"m_{mod}"][s]
      _close(adam.mu, m_ref, f"m_{mod}", s, rtol=1e-4, atol=1e-5 * max(np.abs(m_ref).max(), 1e-30))
      _close(adam.nu, data[f"v_{mod}"][s], f"v_{mod}", s, **tol)
    short = {"im": "img", "tt": "txt"}
    for mod in ("im", "tt"):
      for key in ("kept", "below"):
        np.testing.assert_array_equal(aux.per_anchor[f"{key}_{short[mod]}"],
                                      data[f"{key}_{mod}"][s], f"{key}_{mod} step {s}")
      np.testing.assert_array_equal(aux.per_anchor[f"mask_{short[mod]}"].astype(np.float32),
                                    data[f"mask_{mod}"][s], f"mask_{mod} step {s}")
