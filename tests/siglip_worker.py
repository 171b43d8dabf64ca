"""Subprocess worker of ``tests/test_siglip.py`` (8 fake CPU devices, set by the caller).

    python tests/siglip_worker.py OUT_DIR

Runs the SigLIP objective (dense and ring, 8-device and 1-device meshes) for several detection
modes and treatments over two steps, and writes every loss, gradient, threshold state, metric and
mask to ``OUT_DIR/results.npz``, plus the compiled HLO of one dense and one ring step at
B = 128, d = 24 to ``OUT_DIR/{dense,ring}.hlo`` (``meta.json`` has the shapes).
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import objectives, sharding, siglip
from glofnd_jax import thresholds as thr
# benchmarks/siglip_ring.py, the step whose HLO is checked (benchmarks/ is on the PYTHONPATH
# that tests/test_siglip.py gives this worker).
import siglip_ring

NUM_SAMPLES = 200
BATCH = 64
DIM = 12
# name -> (mode, treatment, start_mask); learned thresholds start at 0.3 so that flags exist.
CASES = {"none": ("none", "remove", 0), "glofnd_remove": ("glofnd", "remove", 0),
         "glofnd_attract": ("glofnd", "attract", 0), "shared_remove": ("glofnd_shared", "remove", 0),
         "oracle_remove": ("oracle", "remove", 0), "glofnd_late_mask": ("glofnd", "remove", 5)}
HLO_BATCH, HLO_DIM = 128, 24


def batches(steps: int = 2):
  """Correlated image/text features (so positives score high) with some duplicate classes."""
  rng = np.random.default_rng(0)
  out = []
  for step in range(steps):
    labels = rng.integers(0, 6, BATCH).astype(np.int32)
    centres = rng.normal(size=(6, DIM))
    base = rng.normal(size=(BATCH, DIM)) + 1.5 * centres[labels]
    img = (base + 0.6 * rng.normal(size=base.shape)).astype(np.float32)
    txt = (base + 0.6 * rng.normal(size=base.shape)).astype(np.float32)
    index = rng.permutation(NUM_SAMPLES)[:BATCH].astype(np.int32)
    out.append({"img": img, "txt": txt, "index_img": index, "index_txt": (index + 7) % NUM_SAMPLES,
                "label": labels, "epoch": step})
  return out


def config(case: str, impl: str) -> objectives.BimodalConfig:
  mode, treatment, start_mask = CASES[case]
  tconfig = thr.ThresholdConfig(alpha=0.05, lr=0.05, lam_init=0.3, start_mask=start_mask)
  return objectives.BimodalConfig(loss="siglip", impl=impl, treatment=treatment, mode=mode,
                                  thresholds=tconfig)


def run(case: str, impl: str, mesh) -> dict:
  cfg = config(case, impl)
  state = objectives.init_bimodal_state(NUM_SAMPLES, cfg)
  logit_scale, bias = jnp.float32(np.exp(siglip.LOG_SCALE_INIT)), jnp.float32(siglip.BIAS_INIT)

  @jax.jit
  def step(b, state):
    def fn(img, txt, scale, bias_):
      return objectives.bimodal_objective(img, txt, b["index_img"], b["index_txt"], state,
                                          b["epoch"], scale, cfg, b["label"], bias=bias_, mesh=mesh)
    return jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)(b["img"], b["txt"],
                                                                      logit_scale, bias)

  @jax.jit
  def masks(b, state):
    """Keep masks of the same step: the ring's reassembled blocks, or dense's per_anchor."""
    if impl == "dense":
      aux = step(b, state)[0][1]
      return aux.per_anchor["mask_img"], aux.per_anchor["mask_txt"]
    t = cfg.thresholds
    learned = state.thresholds_img is not None
    anchors = siglip.ring_step(
        b["img"], b["txt"], b["index_img"], b["index_txt"],
        state.thresholds_img[0] if learned else None, state.thresholds_txt[0] if learned else None,
        b["epoch"], t, mode=cfg.mode, treatment=cfg.treatment, logit_scale=logit_scale, bias=bias,
        mesh=mesh, labels=b["label"], return_masks=True)[1][4]
    return anchors["mask_img"], anchors["mask_txt"]

  out = {}
  for s, b in enumerate(batches()):
    b = {k: jnp.asarray(v) for k, v in b.items()}
    (loss, aux), grads = step(b, state)
    mask_img, mask_txt = masks(b, state)
    state = aux.state
    out[f"{s}/loss"] = loss
    for name, g in zip(("img", "txt", "logit_scale", "bias"), grads):
      out[f"{s}/grad/{name}"] = g
    for name, value in aux.metrics.items():
      out[f"{s}/metric/{name}"] = value
    for name in ("kept_img", "kept_txt", "below_img", "below_txt"):
      out[f"{s}/anchor/{name}"] = aux.per_anchor[name]
    out[f"{s}/mask_img"], out[f"{s}/mask_txt"] = mask_img, mask_txt
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      out[f"{s}/state{jax.tree_util.keystr(path)}"] = leaf
  return {k: np.asarray(v) for k, v in out.items()}


def hlo_text(impl: str, mesh) -> str:
  """Compiled HLO of the benchmark's step: value_and_grad of GloFND SigLIP, batch sharded."""
  return siglip_ring.compile_step(impl, mesh, HLO_BATCH, HLO_DIM, 1024)[0].as_text()


def main(out_dir: str):
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  mesh8 = sharding.make_mesh()
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  assert sharding.data_size(mesh8) == 8, "run with 8 fake CPU devices"
  arrays = {}
  for case in CASES:
    for impl, mesh, tag in (("dense", mesh8, "dense8"), ("ring", mesh8, "ring8"),
                            ("ring", mesh1, "ring1")):
      arrays.update({f"{case}/{tag}/{k}": v for k, v in run(case, impl, mesh).items()})
  np.savez(out / "results.npz", **arrays)
  for impl in ("dense", "ring"):
    (out / f"{impl}.hlo").write_text(hlo_text(impl, mesh8))
  (out / "meta.json").write_text(json.dumps(
      {"batch": HLO_BATCH, "dim": HLO_DIM, "devices": 8, "cases": list(CASES)}))


if __name__ == "__main__":
  main(sys.argv[1])
