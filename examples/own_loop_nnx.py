"""GloFND in your own train step, with Flax NNX, on a mesh, checkpointed with orbax.

A small MLP encoder learns SogCLR + GloFND on random clustered vectors (two noisy views per
sample). The per-sample state (lambda, its Adam moments, ``u``) is sharded over the mesh's
``data`` axis, the model and optimiser are replicated, batches are split over the devices.
After training, the model and the per-sample state are saved with orbax and restored onto a
mesh of half as many devices, and the restored per-sample state is compared with the saved one.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/own_loop_nnx.py

Walked through in docs/YOUR_OWN_LOOP.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import tempfile

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

import glofnd_jax as gj

NUM_SAMPLES, NUM_CLASSES, DIM, BATCH = 256, 8, 16, 64
STEPS_PER_EPOCH = NUM_SAMPLES // BATCH
# init_quantile: lambda starts at the mini-batch (1 - alpha) quantile during epoch 0 instead of
# creeping down from 1, so with start_mask=0 the mask removes negatives from the first step.
CONFIG = gj.UnimodalConfig(
    loss="sogclr", mode="glofnd", temperature=0.2, gamma=0.9,
    thresholds=gj.ThresholdConfig(alpha=0.05, lr=0.05, init_quantile=True,
                                  start_update=0, start_mask=0))


class Encoder(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, width: int = 64, out: int = 32):
    self.hidden = nnx.Linear(DIM, width, rngs=rngs)
    self.out = nnx.Linear(width, out, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def make_data(seed: int):
  """Clustered vectors: samples of one class are each other's false negatives."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(NUM_CLASSES, DIM)) * 1.5
  labels = rng.integers(0, NUM_CLASSES, NUM_SAMPLES).astype(np.int32)
  x = (centers[labels] + rng.normal(size=(NUM_SAMPLES, DIM))).astype(np.float32)
  return x, labels


def train(steps: int, seed: int, mesh):
  x, labels = make_data(seed)
  gj.sharding.check_global_batch(BATCH, mesh, "BATCH")
  model = Encoder(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  # Split once: the jitted step is a pure function of (graph state, per-sample state, batch).
  graphdef, train_state = nnx.split((model, optimizer))
  train_state = jax.device_put(train_state, gj.sharding.replicated(mesh))
  per_sample = gj.sharding.init_unimodal_state_sharded(NUM_SAMPLES, CONFIG, mesh)
  per_sample_shardings = gj.sharding.per_sample_state_shardings(NUM_SAMPLES, CONFIG, mesh)
  replicated = gj.sharding.replicated(mesh)

  # out_shardings keeps lambda, moments and u sharded P('data') step after step.
  @functools.partial(jax.jit, out_shardings=(replicated, per_sample_shardings, replicated))
  def train_step(train_state, per_sample, batch, step):
    model, optimizer = nnx.merge(graphdef, train_state)
    epoch = step // STEPS_PER_EPOCH
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(seed), step))
    view1 = batch["x"] + 0.5 * jax.random.normal(k1, batch["x"].shape)
    view2 = batch["x"] + 0.5 * jax.random.normal(k2, batch["x"].shape)

    def loss_fn(model):
      return gj.unimodal_objective(
          model(view1), model(view2), batch["index"], per_sample, epoch, CONFIG,
          labels=batch["label"],  # diagnostics only: fn_precision / fn_recall
          constrain_rows=lambda rows: gj.sharding.constrain_similarity_rows(rows, mesh))

    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), aux.state, aux.metrics  # metrics: loss, kept, ...

  history = []
  for step in range(steps):
    epoch, position = divmod(step, STEPS_PER_EPOCH)
    order = np.random.default_rng([seed, epoch]).permutation(NUM_SAMPLES)
    index = order[position * BATCH:(position + 1) * BATCH].astype(np.int32)
    batch = jax.device_put({"x": x[index], "index": index, "label": labels[index]},
                           gj.sharding.batch_sharding(mesh))
    train_state, per_sample, metrics = train_step(train_state, per_sample, batch, step)
    history.append({k: float(v) for k, v in metrics.items()})
    print(f"step {step}  loss {history[-1]['loss']:.4f}  kept {history[-1]['kept_fraction']:.3f}"
          f"  lambda {history[-1]['lambda_mean']:.3f}", flush=True)
  return train_state, per_sample, history


def abstract_on(tree, shardings):
  """``tree``'s shapes and dtypes with ``shardings`` (one sharding or a matching tree)."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings), tree)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint-dir", default=None, help="default: a temporary folder")
  parser.add_argument("--report", default=None, help="write a JSON summary here")
  args = parser.parse_args(argv)
  mesh = gj.sharding.make_mesh()
  train_state, per_sample, history = train(args.steps, args.seed, mesh)

  directory = pathlib.Path(args.checkpoint_dir or tempfile.mkdtemp(prefix="own_loop_nnx_"))
  path = directory.absolute() / f"step_{args.steps}"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, {"train_state": train_state, "per_sample": per_sample}, force=True)
  checkpointer.wait_until_finished()

  # Restore onto another device count: the target carries the new mesh's shardings. N (256) is a
  # multiple of both device counts, so the per-sample arrays keep their length (N_pad = N).
  small = gj.sharding.make_mesh(jax.devices()[:max(1, jax.device_count() // 2)])
  target = {"train_state": abstract_on(train_state, gj.sharding.replicated(small)),
            "per_sample": abstract_on(per_sample, gj.sharding.per_sample_state_shardings(
                NUM_SAMPLES, CONFIG, small))}
  restored = checkpointer.restore(path, target)
  saved_leaves, restored_leaves = jax.tree.leaves(per_sample), jax.tree.leaves(
      restored["per_sample"])
  difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(saved_leaves, restored_leaves))
  lam = restored["per_sample"].thresholds[0].lam
  report = {"devices": jax.device_count(),
            "state_devices": len(per_sample.thresholds[0].lam.sharding.device_set),
            "restore_devices": len(lam.sharding.device_set),
            "kept_fraction": [h["kept_fraction"] for h in history],
            "fn_precision": [h["fn_precision"] for h in history],
            "restored_max_abs_difference": difference, "checkpoint": str(path)}
  print(f"saved on {report['devices']} devices, restored on {report['restore_devices']}: "
        f"per-sample state max |difference| {difference:g}; last kept fraction "
        f"{history[-1]['kept_fraction']:.3f}")
  if args.report:
    pathlib.Path(args.report).write_text(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
