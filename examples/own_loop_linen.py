"""GloFND in your own train step, with Flax Linen and optax, on a mesh, checkpointed with orbax.

The Linen twin of ``own_loop_nnx.py``: parameters and optimiser state are plain pytrees, the
train state is ``flax.training.train_state.TrainState`` plus the per-sample GloFND state, all
passed through one ``jax.jit`` step. The per-sample arrays are sharded ``P('data')``, the rest is
replicated; orbax saves everything and restores it onto half as many devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/own_loop_linen.py

Walked through in docs/YOUR_OWN_LOOP.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import tempfile

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state as flax_train_state

import glofnd_jax as gj

NUM_SAMPLES, NUM_CLASSES, DIM, BATCH = 256, 8, 16, 64
STEPS_PER_EPOCH = NUM_SAMPLES // BATCH
# Mask from the first step: lambda_i starts at the mini-batch quantile (init_quantile) in epoch 0.
CONFIG = gj.UnimodalConfig(
    loss="sogclr", mode="glofnd", temperature=0.2, gamma=0.9,
    thresholds=gj.ThresholdConfig(alpha=0.05, lr=0.05, init_quantile=True,
                                  start_update=0, start_mask=0))


class Encoder(nn.Module):
  width: int = 64
  out: int = 32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.out)(nn.relu(nn.Dense(self.width)(x)))


def clustered_vectors(seed: int):
  """``(N, DIM)`` points around NUM_CLASSES centres and their class labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, NUM_SAMPLES).astype(np.int32)
  points = rng.normal(size=(NUM_CLASSES, DIM))[labels] * 1.5 + rng.normal(size=(NUM_SAMPLES, DIM))
  return points.astype(np.float32), labels


def build(seed: int, mesh):
  """Replicated Linen train state and the sharded per-sample state."""
  model = Encoder()
  params = model.init(jax.random.key(seed), np.zeros((1, DIM), np.float32))
  state = flax_train_state.TrainState.create(apply_fn=model.apply, params=params,
                                             tx=optax.adam(1e-3))
  state = jax.device_put(state, gj.sharding.replicated(mesh))
  return state, gj.sharding.init_unimodal_state_sharded(NUM_SAMPLES, CONFIG, mesh)


def make_train_step(mesh, seed: int):
  replicated = gj.sharding.replicated(mesh)
  per_sample_shardings = gj.sharding.per_sample_state_shardings(NUM_SAMPLES, CONFIG, mesh)

  @functools.partial(jax.jit, out_shardings=(replicated, per_sample_shardings, replicated))
  def train_step(state, per_sample, batch):
    epoch = state.step // STEPS_PER_EPOCH
    noise = jax.random.split(jax.random.fold_in(jax.random.key(seed), state.step))
    views = [batch["x"] + 0.5 * jax.random.normal(k, batch["x"].shape) for k in noise]

    def loss_fn(params):
      h1, h2 = (state.apply_fn(params, v) for v in views)
      return gj.unimodal_objective(
          h1, h2, batch["index"], per_sample, epoch, CONFIG, labels=batch["label"],
          constrain_rows=functools.partial(gj.sharding.constrain_similarity_rows, mesh=mesh))

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), aux.state, aux.metrics  # metrics: loss, kept, ...

  return train_step


def batches(seed: int, steps: int, mesh):
  """``steps`` batches of ``BATCH`` samples, each epoch a fresh permutation, split over devices."""
  x, labels = clustered_vectors(seed)
  for step in range(steps):
    epoch, position = divmod(step, STEPS_PER_EPOCH)
    index = np.random.default_rng([seed, epoch]).permutation(NUM_SAMPLES)[
        position * BATCH:(position + 1) * BATCH].astype(np.int32)
    yield jax.device_put({"x": x[index], "index": index, "label": labels[index]},
                         gj.sharding.batch_sharding(mesh))


def restore_target(state, per_sample, mesh):
  """Abstract arrays with ``mesh``'s shardings: what orbax restores onto."""
  as_abstract = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  replicated = gj.sharding.replicated(mesh)
  per_sample_shardings = gj.sharding.per_sample_state_shardings(NUM_SAMPLES, CONFIG, mesh)
  return {"state": jax.tree.map(lambda a: as_abstract(a, replicated), state),
          "per_sample": jax.tree.map(as_abstract, per_sample, per_sample_shardings)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint-dir", default=None, help="default: a temporary folder")
  parser.add_argument("--report", default=None, help="write a JSON summary here")
  args = parser.parse_args(argv)

  mesh = gj.sharding.make_mesh()
  state, per_sample = build(args.seed, mesh)
  train_step = make_train_step(mesh, args.seed)
  kept = []
  for batch in batches(args.seed, args.steps, mesh):
    state, per_sample, metrics = train_step(state, per_sample, batch)
    kept.append(float(metrics["kept_fraction"]))
    print(f"step {int(state.step) - 1}  loss {float(metrics['loss']):.4f}  kept {kept[-1]:.3f}  "
          f"lambda {float(metrics['lambda_mean']):.3f}  "
          f"FN precision {float(metrics['fn_precision']):.3f}", flush=True)

  # The Linen TrainState's apply_fn and tx are static fields: orbax saves only the arrays.
  path = pathlib.Path(args.checkpoint_dir or tempfile.mkdtemp(prefix="own_loop_linen_"))
  path = path.absolute() / f"step_{int(state.step)}"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"state": state, "per_sample": per_sample}, force=True)
    checkpointer.wait_until_finished()
    half = gj.sharding.make_mesh(jax.devices()[:max(1, jax.device_count() // 2)])
    restored = checkpointer.restore(path, restore_target(state, per_sample, half))

  difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(jax.tree.leaves(per_sample), jax.tree.leaves(restored["per_sample"])))
  report = {"devices": jax.device_count(),
            "state_devices": len(per_sample.thresholds[0].lam.sharding.device_set),
            "restore_devices": len(restored["per_sample"].thresholds[0].lam.sharding.device_set),
            "kept_fraction": kept, "restored_step": int(restored["state"].step),
            "restored_max_abs_difference": difference, "checkpoint": str(path)}
  print(f"saved on {report['devices']} devices, restored on {report['restore_devices']}: "
        f"per-sample state max |difference| {difference:g}")
  if args.report:
    pathlib.Path(args.report).write_text(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
