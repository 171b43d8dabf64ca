"""Pure, jitted train steps (Flax Linen model + optax) with the per-sample state sharded.

A step is ``step(state, batch) -> (state, metrics)``, compiled once by ``jax.jit`` with explicit
in/out shardings (:mod:`glofnd_jax.mesh`) and the train state donated, so the per-sample arrays
are updated in place. Everything that changes between steps (step count, epoch, PRNG key) is
traced, so a run compiles the step exactly once.

Inside the step the features are sharded over ``data`` along the batch; the SPMD partitioner then
computes each device's anchor rows against all-gathered columns, and the gradient is the
single-device global-batch gradient (every cross-device term included: it is the same program,
only partitioned). The per-sample state is read and written by global index with O(batch)
collectives (``tests/test_hlo.py`` checks the compiled HLO).

Non-finite values (``nonfinite=``): ``"stop"`` adds ``nonfinite/<array>`` flags to the metrics
(the loss, gradients, parameters, optimiser state, batch statistics, and the batch rows of every
per-sample array, the only rows a step writes) for the train loop to stop on; ``"skip"`` also
keeps the old state when any flag is set, inside the step (no host round trip), and counts the
skipped batches in ``TrainState.skipped_batches``.
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

from glofnd_jax import mesh as mesh_lib
from glofnd_jax import objectives
from glofnd_jax import per_sample as per_sample_lib
from glofnd_jax import state as state_lib


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
  replicated = mesh_lib.replicated(mesh)
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
  return lambda x: mesh_lib.constrain_similarity_rows(x, mesh)


NONFINITE_POLICIES = ("off", "stop", "skip")
NONFINITE_PREFIX = "nonfinite/"


def _all_finite(tree) -> jax.Array:
  """``()`` bool: every floating-point element of ``tree`` is finite (True for no such leaf)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _batch_index(batch: dict) -> jax.Array:
  """Every global dataset index the batch addresses (``index``, ``index_img``, ``index_txt``)."""
  return jnp.concatenate([batch[k].reshape(-1) for k in sorted(batch) if k.startswith("index")])


def _is_per_sample_rows(leaf, num_samples_padded: int) -> bool:
  return jnp.ndim(leaf) >= 1 and leaf.shape[0] == num_samples_padded


def nonfinite_flags(new: TrainState, metrics: dict, batch: dict, num_samples_padded: int) -> dict:
  """``{array name: () bool}``, True where a step produced a non-finite value.

  Args:
    new: the state the step returned.
    metrics: its metrics (``loss`` and ``grad_norm`` are read).
    batch: the batch (every ``index*`` entry is read).
    num_samples_padded: N_pad; leaves with this leading dimension are per-sample arrays.

  Per-sample arrays are checked only at the batch's rows: a step writes no other row, and the
  state before the step was finite, so this is exact at O(batch) cost.
  """
  flags = {"loss": ~jnp.isfinite(metrics["loss"]),
           "gradients": ~jnp.isfinite(metrics["grad_norm"]),
           "params": ~_all_finite(new.params),
           "batch_stats": ~_all_finite(new.batch_stats),
           "opt_state": ~_all_finite(new.opt_state)}
  index = _batch_index(batch)
  for path, leaf in jax.tree_util.tree_flatten_with_path(new.per_sample)[0]:
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    is_rows = _is_per_sample_rows(leaf, num_samples_padded)
    rows = per_sample_lib.gather(leaf, index) if is_rows else leaf
    flags["per_sample" + jax.tree_util.keystr(path)] = ~jnp.all(jnp.isfinite(rows))
  return flags


def _keep_old_state(bad: jax.Array, old: TrainState, new: TrainState, batch: dict,
                    num_samples_padded: int) -> TrainState:
  """``old`` where ``bad`` else ``new``, for every leaf but the step count (a skipped batch is
  still consumed). Per-sample arrays are restored only at the batch rows (O(batch), in place)."""
  pick = lambda n, o: jnp.where(bad, o, n)
  index = _batch_index(batch)

  def per_sample_leaf(n, o):
    if not _is_per_sample_rows(n, num_samples_padded):
      return pick(n, o)
    rows = pick(per_sample_lib.gather(n, index), per_sample_lib.gather(o, index))
    return per_sample_lib.scatter(n, index, rows)

  return new.replace(
      params=jax.tree.map(pick, new.params, old.params),
      batch_stats=jax.tree.map(pick, new.batch_stats, old.batch_stats),
      opt_state=jax.tree.map(pick, new.opt_state, old.opt_state),
      per_sample=jax.tree.map(per_sample_leaf, new.per_sample, old.per_sample),
      skipped_batches=old.skipped_batches + bad.astype(jnp.int32))


def _guard_nonfinite(step_fn, policy: str, num_samples_padded: int):
  """Wrap ``step_fn`` with the non-finite ``policy`` (see the module docstring)."""
  if policy not in NONFINITE_POLICIES:
    raise ValueError(f"nonfinite={policy!r} is unknown; choose one of "
                     f"{', '.join(NONFINITE_POLICIES)}.")
  if policy == "off":
    return step_fn

  def guarded(state: TrainState, batch: dict):
    new_state, metrics = step_fn(state, batch)
    flags = nonfinite_flags(new_state, metrics, batch, num_samples_padded)
    if policy == "skip":
      bad = jnp.any(jnp.stack(list(flags.values())))
      new_state = _keep_old_state(bad, state, new_state, batch, num_samples_padded)
      metrics["skipped_batches"] = new_state.skipped_batches.astype(jnp.float32)
    metrics.update({NONFINITE_PREFIX + k: v.astype(jnp.float32) for k, v in flags.items()})
    return new_state, metrics

  return guarded


def _compile(step_fn, num_samples: int, objective_config, mesh: Mesh, global_batch: int,
             nonfinite: str = "off"):
  mesh_lib.check_global_batch(global_batch, mesh)
  step_fn = _guard_nonfinite(step_fn, nonfinite, mesh_lib.padded_size(num_samples, mesh))
  per_sample = state_lib.per_sample_state_shardings(num_samples, objective_config, mesh)
  state_shardings = train_state_shardings(per_sample, mesh)
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
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
    mesh: from :func:`glofnd_jax.mesh.make_mesh`.
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
      h1, h2 = mesh_lib.constrain_batch(h1, mesh), mesh_lib.constrain_batch(h2, mesh)
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
      img, txt = mesh_lib.constrain_batch(img, mesh), mesh_lib.constrain_batch(txt, mesh)
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
  padded = mesh_lib.padded_size(num_samples, mesh)

  def init(key):
    init_key, state_key = jax.random.split(key)
    dummies = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    variables = model.init(init_key, *dummies, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      per_sample=state_lib.init_per_sample_state(padded, objective_config),
                      rng=state_key, skipped_batches=jnp.zeros((), jnp.int32))

  per_sample = state_lib.per_sample_state_shardings(num_samples, objective_config, mesh)
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
