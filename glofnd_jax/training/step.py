"""Pure, jitted train steps (Flax Linen model + optax) with the per-sample state sharded.

A step is ``step(state, batch) -> (state, metrics)``, compiled once by ``jax.jit`` with explicit
in/out shardings (:mod:`glofnd_jax.sharding`) and the train state donated, so the per-sample arrays
are updated in place. Everything that changes between steps (step count, epoch, PRNG key) is
traced, so a run compiles the step exactly once.

Inside the step the features are sharded over ``data`` along the batch; the SPMD partitioner then
computes each device's anchor rows against all-gathered columns, and the gradient is the
single-device global-batch gradient (every cross-device term included: it is the same program,
only partitioned). The per-sample state is read and written by global index with O(batch)
collectives (``tests/test_hlo.py`` checks the compiled HLO).

Non-finite values: :mod:`glofnd_jax.training.nonfinite` wraps the step (``nonfinite=``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from glofnd_jax import objectives, sharding
from glofnd_jax.training import nonfinite as nonfinite_lib


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; a plain pytree.

  Attributes:
    step: ``()`` int32 number of steps taken.
    params: model parameters (replicated).
    batch_stats: Linen ``batch_stats`` collection (replicated; ``{}`` without BatchNorm).
    opt_state: optax state of ``params`` (replicated).
    per_sample: ``UnimodalState`` / ``BimodalState`` of ``(N_pad,)`` leaves sharded ``P('data')``.
    rng: PRNG key (replicated); step keys are ``fold_in(rng, step)``, ``rng`` itself never changes.
    skipped_batches: ``()`` int32 batches skipped for non-finite values (``nonfinite="skip"``).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  per_sample: Any
  rng: jax.Array
  skipped_batches: jax.Array


def epoch_at_step(step, global_batch: int, num_samples: int) -> jax.Array:
  """``floor(step * global_batch / num_samples)`` as int32, exact for any step < 2**31.

  The plain product overflows int32 early at scale (B = 32768 overflows after 65536 steps), so
  this runs the long multiplication bit by bit over ``global_batch`` (static), keeping quotient
  and remainder by ``num_samples`` in uint32 (every intermediate stays < 2**32).
  """
  if not 0 < num_samples < 2**31 or not 0 < global_batch < 2**31:
    raise ValueError("num_samples and global_batch must lie in [1, 2**31).")
  step = jnp.asarray(step).astype(jnp.uint32)
  n = jnp.uint32(num_samples)
  quotient, remainder = jnp.uint32(0), jnp.uint32(0)
  for bit in bin(global_batch)[2:]:
    # Invariant: step * prefix == quotient * n + remainder, remainder < n, prefix = bits so far.
    quotient, remainder = quotient * 2, remainder * 2
    carry = (remainder >= n).astype(jnp.uint32)
    quotient, remainder = quotient + carry, remainder - carry * n
    if bit == "1":
      total = remainder + step
      quotient, remainder = quotient + total // n, total % n
  return quotient.astype(jnp.int32)


def train_state_shardings(per_sample_shardings: Any, mesh: Mesh) -> TrainState:
  """Sharding prefix tree of a :class:`TrainState` (per-sample leaves from the state module)."""
  replicated = sharding.replicated(mesh)
  return TrainState(step=replicated, params=replicated, batch_stats=replicated,
                    opt_state=replicated, per_sample=per_sample_shardings, rng=replicated,
                    skipped_batches=replicated)


def _scalars(metrics: dict) -> dict:
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items() if jnp.ndim(v) == 0}


def _encode(model: nn.Module, params, batch_stats, key, *inputs):
  """One ``train=True`` forward pass; returns the outputs and the updated batch statistics."""
  outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, *inputs,
                                 train=True, mutable=["batch_stats"], rngs={"dropout": key})
  return outputs, updates.get("batch_stats", batch_stats)


def _apply_gradients(tx, state: TrainState, grads, batch_stats, per_sample) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state, per_sample=per_sample)


def _differentiate_and_update(tx, state: TrainState, loss_fn, epoch):
  """The shared end of every step: gradients of ``loss_fn``, optax update, scalar metrics."""
  (_, (aux, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = _apply_gradients(tx, state, grads, stats, aux.state)
  metrics = _scalars(aux.metrics)
  metrics.update(grad_norm=optax.tree.norm(grads), epoch=epoch.astype(jnp.float32))
  return new_state, metrics


def _row_constraint(mesh: Mesh):
  """Keep ``(R, B, C)`` similarity rows and masks split by anchor: no device builds all B rows."""
  return lambda x: sharding.constrain_similarity_rows(x, mesh)


def _compile(step_fn, num_samples: int, objective_config, mesh: Mesh, global_batch: int,
             nonfinite: str = "off"):
  sharding.check_global_batch(global_batch, mesh)
  step_fn = nonfinite_lib.guard(step_fn, nonfinite, sharding.padded_size(num_samples, mesh))
  per_sample = sharding.per_sample_state_shardings(num_samples, objective_config, mesh)
  state_shardings = train_state_shardings(per_sample, mesh)
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


def make_unimodal_train_step(model: nn.Module, tx: optax.GradientTransformation,
                             objective_config: objectives.UnimodalConfig, *, num_samples: int,
                             global_batch: int, mesh: Mesh,
                             augment: Callable | None = None,
                             samples_per_epoch: int | None = None,
                             nonfinite: str = "off"):
  """A jitted SogCLR/SimCLR + GloFND step ``step(state, batch) -> (state, metrics)``.

  Args:
    model: Linen module; ``model.apply(variables, x, train=True, mutable=['batch_stats'])``
      returns ``(B, d)`` features. The two views go through it one after the other (batch
      statistics of the second pass start from the first's, as two PyTorch forward calls).
    tx: optax transformation of the parameters.
    objective_config: :class:`~glofnd_jax.objectives.UnimodalConfig` (static).
    num_samples: dataset size N (per-sample arrays have N_pad rows; epoch = step * B // N).
    global_batch: B, a multiple of the ``data`` axis size.
    mesh: from :func:`glofnd_jax.sharding.make_mesh`.
    augment: optional ``augment(key, images) -> (view1, view2)`` run on device.
    samples_per_epoch: samples per epoch for ``epoch = step * B // samples_per_epoch``
      (default N); a loader that drops each epoch's remainder passes ``(N // B) * B`` so the
      step's epoch is the loader's.
    nonfinite: ``"off"``, ``"stop"`` (flag non-finite arrays in the metrics as
      ``nonfinite/<name>``) or ``"skip"`` (also keep the old state for such a batch and count it
      in ``state.skipped_batches``; metric ``skipped_batches``).

  The batch is a dict of ``(B, ...)`` arrays sharded over ``data``: ``view1``, ``view2``,
  ``index`` (int32 global dataset indices) and optional ``label``; with ``augment``, ``image``
  instead of the two views. Metrics are float32 scalars (the objective's, plus ``grad_norm``
  and ``epoch``).
  """
  if not isinstance(objective_config, objectives.UnimodalConfig):
    raise TypeError("make_unimodal_train_step needs a UnimodalConfig.")
  rows = _row_constraint(mesh)

  def step(state: TrainState, batch: dict):
    key = jax.random.fold_in(state.rng, state.step)
    augment_key, key_1, key_2 = jax.random.split(key, 3)
    if augment is None:
      view1, view2 = batch["view1"], batch["view2"]
    else:
      view1, view2 = augment(augment_key, batch["image"])
    epoch = epoch_at_step(state.step, global_batch, samples_per_epoch or num_samples)
    labels = batch.get("label")

    def loss_fn(params):
      h1, stats = _encode(model, params, state.batch_stats, key_1, view1)
      h2, stats = _encode(model, params, stats, key_2, view2)
      # Pin the features to the batch sharding: anchors stay on the device that embedded them.
      h1, h2 = sharding.constrain_batch(h1, mesh), sharding.constrain_batch(h2, mesh)
      loss, aux = objectives.unimodal_objective(h1, h2, batch["index"], state.per_sample,
                                                epoch, objective_config, labels, rows)
      return loss, (aux, stats)

    return _differentiate_and_update(tx, state, loss_fn, epoch)

  return _compile(step, num_samples, objective_config, mesh, global_batch, nonfinite)


def make_bimodal_train_step(model: nn.Module, tx: optax.GradientTransformation,
                            objective_config: objectives.BimodalConfig, *, num_samples: int,
                            global_batch: int, mesh: Mesh,
                            augment: Callable | None = None,
                            samples_per_epoch: int | None = None,
                            nonfinite: str = "off"):
  """A jitted FastCLIP (v1/v3) + GloFND step ``step(state, batch) -> (state, metrics)``.

  Args:
    model: Linen module; ``model.apply(variables, image, text, train=True,
      mutable=['batch_stats'])`` returns ``(img_feat (B, d), txt_feat (B, d), logit_scale)``.
      For v3 ``logit_scale`` is usually ``exp`` of a parameter, so its gradient reaches ``tx``.
    tx, objective_config, num_samples, global_batch, mesh: as for the unimodal step
      (``objective_config`` is a :class:`~glofnd_jax.objectives.BimodalConfig`).
    augment: optional ``augment(key, images) -> images`` run on device.
    samples_per_epoch, nonfinite: as for the unimodal step.

  The batch is a dict of ``(B, ...)`` arrays: ``image``, ``text``, ``index_img``, ``index_txt``
  (int32 global indices) and optional ``label``.
  """
  if not isinstance(objective_config, objectives.BimodalConfig):
    raise TypeError("make_bimodal_train_step needs a BimodalConfig.")
  rows = _row_constraint(mesh)

  def step(state: TrainState, batch: dict):
    key = jax.random.fold_in(state.rng, state.step)
    augment_key, model_key = jax.random.split(key)
    image = batch["image"] if augment is None else augment(augment_key, batch["image"])
    epoch = epoch_at_step(state.step, global_batch, samples_per_epoch or num_samples)

    def loss_fn(params):
      (img, txt, logit_scale), stats = _encode(model, params, state.batch_stats, model_key,
                                               image, batch["text"])
      img, txt = sharding.constrain_batch(img, mesh), sharding.constrain_batch(txt, mesh)
      loss, aux = objectives.bimodal_objective(img, txt, batch["index_img"], batch["index_txt"],
                                               state.per_sample, epoch, logit_scale,
                                               objective_config, batch.get("label"), rows,
                                               bias=params.get("logit_bias"), mesh=mesh)
      return loss, (aux, stats)

    return _differentiate_and_update(tx, state, loss_fn, epoch)

  return _compile(step, num_samples, objective_config, mesh, global_batch, nonfinite)


def _train_state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                             sample_input: Any, objective_config, num_samples: int, mesh: Mesh):
  """``init(key) -> TrainState`` and the matching sharding tree."""
  inputs = sample_input if isinstance(sample_input, (tuple, list)) else (sample_input,)
  shapes = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in inputs]
  padded = sharding.padded_size(num_samples, mesh)

  def init(key):
    init_key, state_key = jax.random.split(key)
    dummies = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    variables = model.init(init_key, *dummies, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      per_sample=sharding.init_per_sample_state(padded, objective_config),
                      rng=state_key, skipped_batches=jnp.zeros((), jnp.int32))

  per_sample = sharding.per_sample_state_shardings(num_samples, objective_config, mesh)
  return init, train_state_shardings(per_sample, mesh)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, sample_input: Any,
                       objective_config, num_samples: int, mesh: Mesh,
                       rng: jax.Array) -> TrainState:
  """Initialise a :class:`TrainState` directly with its shardings (one jitted initialiser).

  Args:
    model: the Linen module (initialised with ``train=False``).
    tx: optax transformation.
    sample_input: an array (unimodal) or a tuple of arrays (bimodal: ``(image, text)``); only
      shapes and dtypes are used, so host-local arrays of any batch size work on every process.
    objective_config: ``UnimodalConfig`` or ``BimodalConfig`` (picks the per-sample state).
    num_samples: dataset size N.
    mesh: the mesh.
    rng: PRNG key (typed or raw); split into the parameter init key and ``state.rng``. Must hold
      the same value on every process.

  Returns:
    A :class:`TrainState` with step 0; parameters and optimiser state replicated, per-sample
    arrays ``(N_pad,)`` sharded ``P('data')``, never materialised whole on one device.
  """
  init, shardings = _train_state_initializer(model, tx, sample_input, objective_config,
                                             num_samples, mesh)
  # The key enters as a compile-time constant: a key array committed to one local device cannot
  # be an argument of a jit that spans other processes' devices.
  typed_key = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  key_data = np.asarray(jax.random.key_data(rng) if typed_key else rng)
  key_impl = jax.random.key_impl(rng) if typed_key else None

  def init_from_constant():
    key = jnp.asarray(key_data)
    return init(jax.random.wrap_key_data(key, impl=key_impl) if typed_key else key)

  return jax.jit(init_from_constant, out_shardings=shardings)()


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, sample_input: Any,
                         objective_config, num_samples: int, mesh: Mesh,
                         rng: jax.Array | None = None) -> TrainState:
  """The :class:`TrainState` as ``jax.ShapeDtypeStruct`` leaves carrying their shardings.

  For ahead-of-time compilation (``step.lower(abstract, batch).compile()``) and as the restore
  target of a checkpoint. ``rng`` only sets the key's type (default: a typed ``jax.random.key``).
  """
  init, shardings = _train_state_initializer(model, tx, sample_input, objective_config,
                                             num_samples, mesh)
  key = jax.random.key(0) if rng is None else rng
  return jax.eval_shape(jax.jit(init, out_shardings=shardings), key)
