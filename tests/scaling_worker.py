"""Subprocess worker for the scale-out tests (needs its own device count, set before jax import).

    python tests/scaling_worker.py sharding OUT.npz       # 8 vs 1 device, duplicates, recompiles
    python tests/scaling_worker.py treatments OUT.npz     # 8 vs 1 device, attract / reweight
    python tests/scaling_worker.py hlo OUT_DIR            # compiled HLO texts of the steps
                                                          # (every non-finite policy)
    python tests/scaling_worker.py multihost OUT.npz PROCESS_ID NUM_PROCESSES PORT
    python tests/scaling_worker.py single OUT.npz         # single-process reference of multihost

Each mode writes plain arrays / text; the pytest files compare them, so failures show up there.
The device count comes from ``XLA_FLAGS`` set by the caller (8 fake CPU devices; 4 per process
for ``multihost``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from glofnd_jax import distributed, objectives, sharding
from glofnd_jax import thresholds as thr
from glofnd_jax.training import step as ts

NUM_SAMPLES = 61  # not a multiple of 8: exercises the padding
GLOBAL_BATCH = 16
IN_DIM = 8
NUM_CLASSES = 4
STEPS = 6  # epochs 0,0,0,0,1,1: init_quantile during epoch 0, Adam steps and masking in epoch 1


class TinyEncoder(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: exercises params and batch_stats."""

  features: int = 16

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(32, use_bias=False)(x)  # a bias before BatchNorm has no gradient, only noise
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(self.features)(nn.relu(x))


class TinyCLIP(nn.Module):
  """Image tower (TinyEncoder), text tower (Dense) and a learnable log logit scale (v3)."""

  @nn.compact
  def __call__(self, image, text, train: bool):
    img = TinyEncoder(name="image_tower")(image, train)
    txt = nn.Dense(16, name="text_tower")(text)
    log_scale = self.param("log_logit_scale", lambda _: jnp.log(jnp.float32(1 / 0.07)))
    return img, txt, jnp.exp(log_scale)


def augment(key, images):
  """Two noisy, randomly sign-flipped views (a stand-in for image augmentation)."""
  keys = jax.random.split(key, 4)
  views = []
  for k_noise, k_flip in (keys[:2], keys[2:]):
    flip = jnp.where(jax.random.bernoulli(k_flip, 0.5, (images.shape[0], 1)), -1.0, 1.0)
    views.append(images * flip + 0.1 * jax.random.normal(k_noise, images.shape))
  return views[0], views[1]


def threshold_config(**overrides) -> thr.ThresholdConfig:
  base = dict(alpha=0.1, lr=0.05, init_quantile=True, start_update=0, start_mask=1)
  base.update(overrides)
  return thr.ThresholdConfig(**base)


CASES = {
    "sogclr": dict(kind="unimodal", augment=False, config=objectives.UnimodalConfig(
        loss="sogclr", thresholds=threshold_config(), temperature=0.1)),
    "simclr": dict(kind="unimodal", augment=True, config=objectives.UnimodalConfig(
        loss="simclr", thresholds=threshold_config(), temperature=0.1)),
    "fastclip_v3": dict(kind="bimodal", augment=False, config=objectives.BimodalConfig(
        version="v3", thresholds=threshold_config(eps=1e-14), gamma_decay_epochs=2)),
    # Adam steps on lambda and masking from the first step (for the 3-step multi-host run).
    "sogclr_from_start": dict(kind="unimodal", augment=False, config=objectives.UnimodalConfig(
        loss="sogclr", thresholds=threshold_config(init_quantile=False, lam_init=0.2,
                                                   start_mask=0))),
}
SHARDING_CASES = ("sogclr", "simclr", "fastclip_v3")

# Treatments of the flagged negatives, masking from the first step; the detectors vary so that
# every one of them feeds a treatment once. name: (loss, detection mode, treatment).
TREATMENT_CASES = {
    "sogclr_attract": ("sogclr", "glofnd", "attract"),
    "sogclr_reweight": ("sogclr", "glofnd_shared", "reweight"),
    "simclr_attract": ("simclr", "oracle", "attract"),
    "simclr_reweight": ("simclr", "fnd", "reweight"),
    "fastclip_v3_attract": ("fastclip_v3", "glofnd", "attract"),
    "fastclip_v3_reweight": ("fastclip_v3", "glofnd", "reweight"),
}
TREATMENT_STEPS = 3


def _treatment_case(loss: str, mode: str, treatment: str) -> dict:
  tconfig = threshold_config(init_quantile=False, lam_init=0.2, start_mask=0)
  if loss == "fastclip_v3":
    return dict(kind="bimodal", augment=False, config=objectives.BimodalConfig(
        version="v3", mode=mode, thresholds=dataclasses.replace(tconfig, eps=1e-14),
        gamma_decay_epochs=2, treatment=treatment))
  return dict(kind="unimodal", augment=loss == "simclr", config=objectives.UnimodalConfig(
      loss=loss, mode=mode, thresholds=tconfig, temperature=0.1, treatment=treatment))


CASES.update({name: _treatment_case(*spec) for name, spec in TREATMENT_CASES.items()})


def dataset(seed: int = 0):
  """Clustered synthetic data: images, texts and labels for ``NUM_SAMPLES`` samples."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, NUM_CLASSES, NUM_SAMPLES).astype(np.int32)
  centers = rng.normal(size=(NUM_CLASSES, IN_DIM)).astype(np.float32)
  images = centers[labels] + 0.5 * rng.normal(size=(NUM_SAMPLES, IN_DIM)).astype(np.float32)
  texts = centers[labels] + 0.5 * rng.normal(size=(NUM_SAMPLES, IN_DIM)).astype(np.float32)
  return images, texts, labels


def global_batches(kind: str, use_augment: bool, steps: int = STEPS, seed: int = 1):
  """Deterministic global batches (numpy), indices drawn without replacement per batch."""
  images, texts, labels = dataset()
  rng = np.random.RandomState(seed)
  batches = []
  for _ in range(steps):
    index = rng.choice(NUM_SAMPLES, GLOBAL_BATCH, replace=False).astype(np.int32)
    if kind == "bimodal":
      # Text indices differ from image indices (a bijection): the two states are addressed apart.
      batches.append({"image": images[index], "text": texts[index], "index_img": index,
                      "index_txt": (index * 7 + 3) % NUM_SAMPLES, "label": labels[index]})
    elif use_augment:
      batches.append({"image": images[index], "index": index, "label": labels[index]})
    else:
      noise = 0.1 * rng.normal(size=(2, GLOBAL_BATCH, IN_DIM)).astype(np.float32)
      batches.append({"view1": images[index] + noise[0], "view2": images[index] + noise[1],
                      "index": index})
  return batches


def build(case: str, mesh, tx=None):
  """(state, step) for one case on ``mesh``; plain SGD so parameters are linear in gradients."""
  spec = CASES[case]
  tx = tx or optax.sgd(0.1)
  common = dict(num_samples=NUM_SAMPLES, global_batch=GLOBAL_BATCH, mesh=mesh)
  if spec["kind"] == "unimodal":
    model = TinyEncoder()
    sample = np.zeros((2, IN_DIM), np.float32)
    step = ts.make_unimodal_train_step(model, tx, spec["config"],
                                       augment=augment if spec["augment"] else None, **common)
  else:
    model = TinyCLIP()
    sample = (np.zeros((2, IN_DIM), np.float32), np.zeros((2, IN_DIM), np.float32))
    step = ts.make_bimodal_train_step(model, tx, spec["config"], **common)
  state = ts.create_train_state(model, tx, sample, spec["config"], NUM_SAMPLES, mesh,
                                jax.random.key(0))
  return state, step


def flat(tree, prefix: str) -> dict:
  """Host copies of every leaf, keyed by its path; per-sample leaves trimmed to N rows."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.asarray(jax.device_get(leaf))
    if prefix.startswith("per_sample") and value.ndim and value.shape[0] >= NUM_SAMPLES:
      value = value[:NUM_SAMPLES]
    out[prefix + jax.tree_util.keystr(path)] = value
  return out


def run_steps(case: str, mesh, batches) -> dict:
  state, step = build(case, mesh)
  out, compiles = {}, []

  def listener(event, _, **kwargs):
    if "compile" in event:  # jaxpr tracing, lowering and backend compilation events
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for s, batch in enumerate(batches):
      before = len(compiles)
      state, metrics = step(state, batch)
      out[f"compile_events/{s}"] = np.asarray(len(compiles) - before)
      for name, value in metrics.items():
        out[f"metric/{name}/{s}"] = np.asarray(value)
      out.update(flat(state.params, f"params/{s}"))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  out.update(flat(state.batch_stats, "batch_stats"))
  out.update(flat(state.per_sample, "per_sample"))
  return out


def duplicate_case(mesh) -> dict:
  """One step with index 5 at batch positions 1 and 14 (different devices on 8), vs index 60."""
  config = objectives.UnimodalConfig(loss="sogclr", thresholds=threshold_config(
      init_quantile=False, lam_init=0.2, start_mask=0))
  model, tx = TinyEncoder(), optax.sgd(0.1)
  step = ts.make_unimodal_train_step(model, tx, config, num_samples=NUM_SAMPLES,
                                     global_batch=GLOBAL_BATCH, mesh=mesh)
  fresh = ts.create_train_state(model, tx, np.zeros((2, IN_DIM), np.float32), config,
                                NUM_SAMPLES, mesh, jax.random.key(0))
  batch = global_batches("unimodal", False, steps=1, seed=7)[0]
  out = {}
  for name, first in (("dup", 5), ("ref", 60)):
    index = np.arange(GLOBAL_BATCH, dtype=np.int32) + 20
    index[1], index[14] = first, 5
    state = jax.tree.map(jnp.copy, fresh)  # the step donates its input
    state, _ = step(state, dict(batch, index=index))
    out.update(flat(state.per_sample, f"per_sample_{name}"))
  return out


def creation_case(mesh) -> dict:
  """Shardings and per-device shapes of freshly created state, and the initialiser's HLO."""
  info = {}
  for case, model, sample in (
      ("sogclr", TinyEncoder(), np.zeros((2, IN_DIM), np.float32)),
      ("fastclip_v3", TinyCLIP(), (np.zeros((2, IN_DIM), np.float32),) * 2)):
    config = CASES[case]["config"]
    state = ts.create_train_state(model, optax.adam(1e-3), sample, config, NUM_SAMPLES, mesh,
                                  jax.random.key(0))
    leaves = jax.tree.leaves(state.per_sample)
    big = 1_000_003
    info[case] = {
        "specs": [str(leaf.sharding.spec) for leaf in leaves],
        "global_shapes": [list(leaf.shape) for leaf in leaves],
        "shard_shapes": [list(leaf.addressable_shards[0].data.shape) for leaf in leaves],
        "replicated_specs": sorted({str(x.sharding.spec) for x in jax.tree.leaves(
            (state.params, state.opt_state, state.batch_stats, state.step, state.rng))}),
        "init_hlo": sharding.sharded_initializer(big, config, mesh).lower().compile().as_text(),
        "init_padded": sharding.padded_size(big, mesh),
    }
  shared = objectives.UnimodalConfig(mode="glofnd_shared")
  state = sharding.init_unimodal_state_sharded(NUM_SAMPLES, shared, mesh)
  info["shared"] = {"lam_spec": str(state.thresholds[0].lam.sharding.spec),
                    "lam_shape": list(state.thresholds[0].lam.shape),
                    "u_spec": str(state.loss[0].u.sharding.spec)}
  return info


def mode_sharding(out_path: str):
  assert jax.device_count() == 8, jax.devices()
  mesh8, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
  arrays = {}
  for case in SHARDING_CASES:
    spec = CASES[case]
    batches = global_batches(spec["kind"], spec["augment"])
    for tag, mesh in (("d8", mesh8), ("d1", mesh1)):
      t0 = time.time()
      arrays.update({f"{case}/{tag}/{k}": v for k, v in run_steps(case, mesh, batches).items()})
      print(f"{case} {tag}: {time.time() - t0:.1f}s", file=sys.stderr)
  for tag, mesh in (("d8", mesh8), ("d1", mesh1)):
    t0 = time.time()
    arrays.update({f"duplicate/{tag}/{k}": v for k, v in duplicate_case(mesh).items()})
    print(f"duplicate {tag}: {time.time() - t0:.1f}s", file=sys.stderr)
  np.savez(out_path, **arrays)
  pathlib.Path(out_path).with_suffix(".json").write_text(json.dumps(creation_case(mesh8)))


def mode_treatments(out_path: str):
  assert jax.device_count() == 8, jax.devices()
  mesh8, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
  arrays, specs = {}, {}
  for case, (loss, mode, treatment) in TREATMENT_CASES.items():
    spec = CASES[case]
    batches = global_batches(spec["kind"], spec["augment"], steps=TREATMENT_STEPS)
    for tag, mesh in (("d8", mesh8), ("d1", mesh1)):
      t0 = time.time()
      arrays.update({f"{case}/{tag}/{k}": v for k, v in run_steps(case, mesh, batches).items()
                     if not k.startswith("compile_events")})
      print(f"{case} {tag}: {time.time() - t0:.1f}s", file=sys.stderr)
    specs[case] = {"loss": loss, "mode": mode, "treatment": treatment}
  np.savez(out_path, **arrays)
  pathlib.Path(out_path).with_suffix(".json").write_text(json.dumps(specs))


def hlo_text(kind: str, mesh, num_samples: int, global_batch: int, bad: bool = False,
             loss: str = "sogclr", treatment: str = "remove", nonfinite: str = "off") -> str:
  """Compiled HLO of a train step; ``bad`` all-gathers lambda first (must be caught)."""
  if kind == "unimodal":
    config = objectives.UnimodalConfig(loss=loss, treatment=treatment)
    model, sample = TinyEncoder(), np.zeros((2, IN_DIM), np.float32)
    batch = {"view1": np.zeros((global_batch, IN_DIM), np.float32),
             "view2": np.zeros((global_batch, IN_DIM), np.float32),
             "index": np.zeros((global_batch,), np.int32)}
    make = ts.make_unimodal_train_step
  else:
    config = objectives.BimodalConfig(version="v3", treatment=treatment)
    model = TinyCLIP()
    sample = (np.zeros((2, IN_DIM), np.float32), np.zeros((2, IN_DIM), np.float32))
    batch = {"image": np.zeros((global_batch, IN_DIM), np.float32),
             "text": np.zeros((global_batch, IN_DIM), np.float32),
             "index_img": np.zeros((global_batch,), np.int32),
             "index_txt": np.zeros((global_batch,), np.int32)}
    make = ts.make_bimodal_train_step
  tx = optax.adam(1e-3)
  if bad:
    # A deliberately wrong model: it reads lambda replicated (an all-gather of the (N,) array).
    replicated = sharding.replicated(mesh)
    original = objectives.unimodal_objective

    def bad_objective(h1, h2, index, state, epoch, cfg, *args):
      full = jax.lax.with_sharding_constraint(state.thresholds[0].lam, replicated)
      loss, aux = original(h1, h2, index, state, epoch, cfg, *args)
      return loss, aux._replace(metrics={**aux.metrics, "leak": jnp.sum(full[index])})

    objectives.unimodal_objective = bad_objective
    try:
      step = make(model, tx, config, num_samples=num_samples, global_batch=global_batch, mesh=mesh)
      abstract = ts.abstract_train_state(model, tx, sample, config, num_samples, mesh)
      return step.lower(abstract, batch).compile().as_text()
    finally:
      objectives.unimodal_objective = original
  step = make(model, tx, config, num_samples=num_samples, global_batch=global_batch, mesh=mesh,
              nonfinite=nonfinite)
  abstract = ts.abstract_train_state(model, tx, sample, config, num_samples, mesh)
  return step.lower(abstract, batch).compile().as_text()


# The treatment paths of the compiled steps. name: (kind, unimodal loss or None, treatment).
HLO_TREATMENT_PROGRAMS = {
    f"{prefix}_{treatment}": (kind, loss, treatment)
    for prefix, kind, loss in (("unimodal", "unimodal", "sogclr"), ("simclr", "unimodal", "simclr"),
                               ("bimodal", "bimodal", None))
    for treatment in ("attract", "reweight")}
HLO_POLICIES = ("off", "stop", "skip")


def mode_hlo(out_dir: str):
  assert jax.device_count() == 8, jax.devices()
  out = pathlib.Path(out_dir)
  mesh = sharding.make_mesh()
  num_samples, global_batch = 100_003, 64
  for kind in ("unimodal", "bimodal"):
    for policy in HLO_POLICIES:
      (out / f"{kind}_{policy}.hlo").write_text(
          hlo_text(kind, mesh, num_samples, global_batch, nonfinite=policy))
  (out / "bad.hlo").write_text(hlo_text("unimodal", mesh, num_samples, global_batch, bad=True))
  for name, (kind, loss, treatment) in HLO_TREATMENT_PROGRAMS.items():
    (out / f"{name}.hlo").write_text(hlo_text(kind, mesh, num_samples, global_batch,
                                              loss=loss or "sogclr", treatment=treatment))
  (out / "meta.json").write_text(json.dumps({
      "num_samples": num_samples, "padded": sharding.padded_size(num_samples, mesh),
      "devices": jax.device_count(), "global_batch": global_batch}))


MULTIHOST_CASE = "sogclr_from_start"
MULTIHOST_STEPS = 3


def multihost_result(mesh, feed) -> dict:
  """Three steps of the SogCLR case; ``feed`` turns a numpy global batch into step input."""
  spec = CASES[MULTIHOST_CASE]
  batches = global_batches(spec["kind"], spec["augment"], steps=MULTIHOST_STEPS)
  state, step = build(MULTIHOST_CASE, mesh, tx=optax.adam(1e-2))
  out = {}
  for s, batch in enumerate(batches):
    state, metrics = step(state, feed(batch))
    out[f"loss/{s}"] = np.asarray(metrics["loss"])
  # Replicated leaves are fully addressable everywhere; per-sample leaves are gathered to hosts.
  gathered = multihost_utils.process_allgather(
      {"params": state.params, "per_sample": state.per_sample}, tiled=True)
  out.update(flat(gathered["params"], "params"))
  out.update(flat(gathered["per_sample"], "per_sample"))
  return out


def mode_multihost(out_path: str, process_id: int, num_processes: int, port: int):
  distributed.initialize(f"localhost:{port}", num_processes, process_id)
  assert jax.process_count() == num_processes and jax.local_device_count() == 4
  mesh = sharding.make_mesh()

  def feed(batch):
    rows = distributed.local_batch_rows(GLOBAL_BATCH, mesh)
    local = {k: v[rows] for k, v in batch.items()}
    return distributed.global_batch_from_local(local, mesh)

  out = multihost_result(mesh, feed)
  out["local_rows"] = np.arange(GLOBAL_BATCH)[distributed.local_batch_rows(GLOBAL_BATCH, mesh)]
  np.savez(out_path, **out)
  jax.distributed.shutdown()


def mode_single(out_path: str):
  assert jax.process_count() == 1 and jax.device_count() == 8
  np.savez(out_path, **multihost_result(sharding.make_mesh(), lambda batch: batch))


if __name__ == "__main__":
  mode, args = sys.argv[1], sys.argv[2:]
  if mode == "sharding":
    mode_sharding(*args)
  elif mode == "treatments":
    mode_treatments(*args)
  elif mode == "hlo":
    mode_hlo(*args)
  elif mode == "multihost":
    mode_multihost(args[0], int(args[1]), int(args[2]), int(args[3]))
  elif mode == "single":
    mode_single(*args)
  else:
    raise SystemExit(f"unknown mode {mode!r}")
