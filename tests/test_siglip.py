"""SigLIP with GloFND: the loss's definition, its gradient, and dense == ring on 8 fake devices.

The multi-device half runs ``tests/siglip_worker.py`` in a subprocess (8 fake CPU devices): six
cases (no detection; GloFND with removal, attraction, a shared threshold, a mask that starts
later; the label oracle) over two steps, each as dense on 8 devices, ring on 8 devices and ring
on 1 device, plus the compiled HLO of a dense and a ring step.
"""

import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import scaling_subprocess
from jax.test_util import check_grads
from test_hlo import parse_instructions

from glofnd_jax import losses, objectives, siglip
from glofnd_jax import thresholds as thr

TOL = dict(rtol=2e-5, atol=2e-6)


def _features(batch=6, dim=5, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(batch, dim))
  img = base + 0.5 * rng.normal(size=base.shape)
  txt = base + 0.5 * rng.normal(size=base.shape)
  return jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32)


def _reference_terms(img, txt, scale, bias):
  """``(B, B)`` float64 pair terms softplus(-l z) and their labels, written out with numpy."""
  x = np.asarray(img, np.float64)
  y = np.asarray(txt, np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  logits = scale * x @ y.T + bias
  labels = 2 * np.eye(len(x)) - 1
  return np.log1p(np.exp(-labels * logits)), np.log1p(np.exp(labels * logits))


def test_loss_is_the_papers_sum_over_pairs_over_batch():
  img, txt = _features()
  terms, _ = _reference_terms(img, txt, 10.0, -10.0)
  loss = losses.siglip_loss(img, txt, logit_scale=10.0, bias=-10.0)
  np.testing.assert_allclose(loss, terms.sum() / 6, rtol=1e-5)
  assert siglip.LOG_SCALE_INIT == pytest.approx(math.log(10.0)) and siglip.BIAS_INIT == -10.0


def test_directions_each_treat_half_of_a_pair():
  """Flagged by one direction: half the pair term goes (removal) or flips label (attraction);
  flagged by both: all of it. Removed pairs leave the sum; the divisor stays B."""
  img, txt = _features()
  batch = 6
  terms, flipped = _reference_terms(img, txt, 5.0, -2.0)
  keep_img = ~np.eye(batch, dtype=bool)
  keep_txt = ~np.eye(batch, dtype=bool)
  keep_img[0, 1] = False  # image anchor 0 flags text 1: pair (0, 1)
  keep_txt[3, 2] = False  # text anchor 3 flags image 2: pair (2, 3) ...
  keep_img[2, 3] = False  # ... which image anchor 2 flags too
  flagged = siglip.dense_flags(jnp.asarray(keep_img), jnp.asarray(keep_txt))
  assert int(flagged.sum()) == 3
  full = terms.sum()

  weight, attract = siglip.treat(flagged, "remove")
  assert attract is None
  removed = losses.siglip_loss(img, txt, logit_scale=5.0, bias=-2.0, neg_weight=weight)
  np.testing.assert_allclose(removed, (full - 0.5 * terms[0, 1] - terms[2, 3]) / batch, rtol=1e-5)

  weight, attract = siglip.treat(flagged, "attract")
  attracted = losses.siglip_loss(img, txt, logit_scale=5.0, bias=-2.0, neg_weight=weight,
                                 attract=attract)
  expected = full + 0.5 * (flipped[0, 1] - terms[0, 1]) + (flipped[2, 3] - terms[2, 3])
  np.testing.assert_allclose(attracted, expected / batch, rtol=1e-5)

  # A (B, B) weight applies to both halves; the positives are never weighted.
  soft = np.full((batch, batch), 0.25, np.float32)
  weighted = losses.siglip_loss(img, txt, logit_scale=5.0, bias=-2.0, neg_weight=soft)
  np.testing.assert_allclose(weighted, (np.trace(terms) + 0.25 * (full - np.trace(terms)))
                             / batch, rtol=1e-5)


@pytest.mark.parametrize("treatment", ["none", "weights", "attract"])
def test_gradient_matches_finite_differences(treatment):
  img, txt = _features(batch=4, dim=3, seed=1)
  rng = np.random.default_rng(2)
  weight = jnp.asarray(rng.uniform(size=(2, 4, 4)), jnp.float32) if treatment == "weights" else 1.0
  attract = jnp.asarray(rng.uniform(size=(2, 4, 4)) < 0.3) if treatment == "attract" else None

  def loss(img, txt, scale, bias):
    return losses.siglip_loss(img, txt, logit_scale=scale, bias=bias, neg_weight=weight,
                              attract=attract)

  check_grads(loss, (img, txt, jnp.float32(3.0), jnp.float32(-1.0)), order=1, modes=["rev"],
              eps=1e-2, atol=2e-2, rtol=2e-2)


def test_config_rejects_what_the_ring_cannot_run():
  with pytest.raises(ValueError, match="fnd"):
    objectives.BimodalConfig(loss="siglip", impl="ring", mode="fnd")
  with pytest.raises(ValueError, match="init_quantile"):
    objectives.BimodalConfig(loss="siglip", impl="ring",
                             thresholds=thr.ThresholdConfig(alpha=0.01, init_quantile=True))
  with pytest.raises(ValueError, match="loss='siglip'"):
    objectives.BimodalConfig(impl="ring")
  with pytest.raises(ValueError, match="treatment"):
    objectives.BimodalConfig(loss="siglip", treatment="drop")
  with pytest.raises(ValueError, match="impl"):
    objectives.BimodalConfig(loss="siglip", impl="chunked")
  img, txt = _features(batch=4)
  config = objectives.BimodalConfig(loss="siglip", impl="ring", mode="none")
  state = objectives.init_bimodal_state(4, config)
  index = jnp.arange(4)
  with pytest.raises(ValueError, match="mesh="):
    objectives.bimodal_objective(img, txt, index, index, state, 0, 10.0, config, bias=-10.0)
  with pytest.raises(ValueError, match="bias="):
    objectives.bimodal_objective(img, txt, index, index, state, 0, 10.0, config)


# ----------------------------------------------------------------------------- 8 fake devices

@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  out = tmp_path_factory.mktemp("siglip")
  env = scaling_subprocess.worker_env(8)
  # The worker imports benchmarks/siglip_ring.py, which imports its folder's common.py.
  env["PYTHONPATH"] = os.pathsep.join([str(scaling_subprocess.TESTS.parent / "benchmarks"),
                                       env["PYTHONPATH"]])
  process = scaling_subprocess.subprocess.Popen(
      [scaling_subprocess.sys.executable, str(scaling_subprocess.TESTS / "siglip_worker.py"),
       str(out)], env=env, stdout=scaling_subprocess.subprocess.PIPE,
      stderr=scaling_subprocess.subprocess.STDOUT, text=True)
  scaling_subprocess.finish(process, timeout=400)
  meta = json.loads((out / "meta.json").read_text())
  hlo = {impl: (out / f"{impl}.hlo").read_text() for impl in ("dense", "ring")}
  return dict(np.load(out / "results.npz")), hlo, meta


def _compare(arrays, case, tag, reference="dense8"):
  keys = sorted(k for k in arrays if k.startswith(f"{case}/{reference}/"))
  assert len(keys) > 20, f"{case}: only {len(keys)} results stored"
  for key in keys:
    other = key.replace(f"/{reference}/", f"/{tag}/", 1)
    expected, actual = arrays[key], arrays[other]
    if expected.dtype == bool or np.issubdtype(expected.dtype, np.integer):
      np.testing.assert_array_equal(actual, expected, err_msg=other)
    else:
      np.testing.assert_allclose(actual, expected, err_msg=other, **TOL)


CASES = ("none", "glofnd_remove", "glofnd_attract", "shared_remove", "oracle_remove",
         "glofnd_late_mask")


@pytest.mark.parametrize("case", CASES)
def test_ring_equals_dense_on_8_devices(worker, case):
  arrays, _, _ = worker
  _compare(arrays, case, "ring8")
  flagged = [arrays[f"{case}/dense8/{s}/metric/img/flagged_fraction"] for s in (0, 1)]
  if case == "none":
    assert not any(flagged)
  else:  # the comparison covers steps where negatives are flagged
    assert all(f > 0 for f in flagged), flagged
  if case == "glofnd_late_mask":  # flagged but kept: the mask is not active yet
    assert np.all(arrays[f"{case}/dense8/1/metric/img/kept_fraction"] == 1.0)
  if case.startswith("glofnd") or case.startswith("shared"):
    lam = [v for k, v in arrays.items() if k.startswith(f"{case}/ring8/1/state") and
           k.endswith(".lam")]
    assert len(lam) == 2 and all(np.any(v != 0.3) for v in lam), "thresholds never moved"


@pytest.mark.parametrize("case", CASES)
def test_ring_on_1_device_equals_8_devices(worker, case):
  arrays, _, _ = worker
  _compare(arrays, case, "ring1", reference="ring8")


def test_ring_moves_chunks_and_holds_no_row_of_similarities(worker):
  """The ring's HLO sends features with collective-permute and has no (B/D, B) buffer (nor a
  B x B one); the dense step's HLO does hold (B/D, B) rows, so the check can fail."""
  _, hlo, meta = worker
  batch, rows = meta["batch"], meta["batch"] // meta["devices"]

  def row_shaped(text):
    return [(i["opcode"], s) for i in parse_instructions(text) for s in i["shapes"]
            if len(s) >= 2 and batch in s and (rows in s or s.count(batch) >= 2)]

  assert not row_shaped(hlo["ring"]), row_shaped(hlo["ring"])[:10]
  assert row_shaped(hlo["dense"]), "dense step has no (B/D, B) rows: is the checker blind?"
  permutes = [i for i in parse_instructions(hlo["ring"])
              if i["opcode"].startswith("collective-permute")]
  assert any((rows, meta["dim"]) in i["shapes"] for i in permutes), \
      "no collective-permute moves a (B/D, d) feature chunk"
  assert not re.search(r"collective-permute", hlo["dense"])


def test_recipes_and_loss_name():
  """``loss.name`` picks the objective ("" keeps ``loss.version``); SigLIP recipes build a model
  with the bias b = -10 and a logit scale from 10."""
  import pathlib

  from glofnd_jax.config import image_text as image_text_config
  configs = pathlib.Path(__file__).resolve().parent.parent / "configs"
  digits = image_text_config.siglip_recipe(configs / "digits_clip_glofnd.py")
  objective = image_text_config.bimodal_objective_config(digits)
  assert (objective.loss, objective.impl) == ("siglip", "dense")
  model = image_text_config.build_model(digits, vocab_size=50)
  assert model.bias_init == siglip.BIAS_INIT and digits.loss.temperature == pytest.approx(0.1)
  cc3m = image_text_config.siglip_recipe(configs / "cc3m_fastclip_glofnd.py", impl="ring")
  assert image_text_config.bimodal_objective_config(cc3m).impl == "ring"
  base = image_text_config.clip_base_config()
  base.loss.version = "v1"
  assert image_text_config.bimodal_objective_config(base).version == "v1"
  base.loss.name = "fastclip_v3"
  assert (image_text_config.bimodal_objective_config(base).version,
          image_text_config.bimodal_objective_config(base).loss) == ("v3", "fastclip")
  base.loss.name = "sigmoid"
  with pytest.raises(ValueError, match="loss.name"):
    image_text_config.bimodal_objective_config(base)
