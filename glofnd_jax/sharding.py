"""The device mesh and every sharding the package uses, declared in one place.

Layout (one ``data`` axis of D devices; more axes, e.g. ``fsdp`` or ``model``, can be added to
:data:`MESH_AXES` later without touching callers):

* parameters, optimiser state, batch statistics, step, PRNG key: replicated.
* batch arrays ``(B, ...)``: sharded ``P('data')`` along B (B must be a multiple of D).
* per-sample arrays ``(N_pad,)`` (lambda, its Adam moments, ``u``): sharded ``P('data')`` along
  N, with N padded up to a multiple of D (:func:`padded_size`). Indices are always < N, so the
  padding rows are never read or written.
* shared-threshold ``(1,)`` leaves and scalars: replicated.
* similarity rows ``(R, B, C)``: ``P(None, 'data', None)``: each device holds its own anchors'
  rows against the whole global batch (:func:`constrain_similarity_rows`).

The axis type is ``Auto`` on purpose. With ``Explicit`` axes (``jax.make_mesh``'s default in
jax >= 0.10), every op on sharded values must be sharding-typed: ``z @ z.T``, ``lam[idx]`` and
``lam.at[idx].set(v)`` inside the unchanged objectives would raise sharding errors or need an
``out_sharding=`` at each call. In ``Auto`` mode the SPMD partitioner propagates the shardings we
pin at the jit boundary (and the few constraints below), so the objectives stay plain array code
and the gather/scatter by global index compile to O(batch) collectives (checked in
``tests/test_hlo.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from glofnd_jax import objectives

DATA = "data"
MESH_AXES = (DATA,)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ``('data',)`` mesh with ``Auto`` axis type over ``devices`` (default: all devices).

  With several processes ``jax.devices()`` lists every process's devices, so the mesh is global.
  """
  if devices is None:
    return jax.make_mesh((jax.device_count(),), MESH_AXES, axis_types=(AxisType.Auto,))
  return Mesh(np.asarray(devices), MESH_AXES, axis_types=(AxisType.Auto,))


def data_size(mesh: Mesh) -> int:
  """Number of devices along the ``data`` axis."""
  return mesh.shape[DATA]


def padded_size(num_samples: int, mesh: Mesh) -> int:
  """``num_samples`` rounded up to a multiple of the ``data`` axis size (N_pad)."""
  if num_samples <= 0:
    raise ValueError(f"num_samples={num_samples!r} must be positive.")
  size = data_size(mesh)
  return -(-num_samples // size) * size


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters, optimiser state, scalars and the PRNG key."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch leaf ``(B, ...)``: B split over ``data``."""
  return NamedSharding(mesh, P(DATA))


def per_sample_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a per-sample ``(N_pad,)`` array: N split over ``data``."""
  return NamedSharding(mesh, P(DATA))


def check_global_batch(global_batch: int, mesh: Mesh, field: str = "global batch") -> None:
  """Raise a clear error unless the global batch splits evenly over ``data``.

  ``field`` names the batch in the message (e.g. ``"config.batch_size"``).
  """
  size = data_size(mesh)
  if global_batch % size:
    lower, upper = global_batch // size * size, -(-global_batch // size) * size
    options = f"{lower} or {upper}" if lower else f"{upper}"
    raise ValueError(f"{field}={global_batch} is not a multiple of the {size} devices on the "
                     f"'{DATA}' axis; choose a batch size divisible by {size} (e.g. {options}).")


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  """The :func:`batch_sharding` for every leaf of a batch pytree (dict of ``(B, ...)`` arrays)."""
  return jax.tree.map(lambda _: batch_sharding(mesh), batch)


def per_sample_shardings(state: Any, mesh: Mesh, num_samples_padded: int) -> Any:
  """Shardings of a per-sample state pytree (``UnimodalState``, ``BimodalState``, ...).

  Args:
    state: pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
    mesh: the mesh.
    num_samples_padded: N_pad (see :func:`padded_size`).

  Returns:
    The same pytree of ``NamedSharding``: leaves whose leading dimension is N_pad are sharded
    ``P('data')``; everything else (the shared threshold's ``(1,)`` leaves, scalars) replicated.
  """
  if num_samples_padded % data_size(mesh):
    raise ValueError(f"num_samples_padded={num_samples_padded} is not a multiple of the "
                     f"'{DATA}' axis size {data_size(mesh)}; use padded_size().")

  def sharding(leaf):
    shape = np.shape(leaf)
    if len(shape) >= 1 and shape[0] == num_samples_padded:
      return per_sample_sharding(mesh)
    return replicated(mesh)

  return jax.tree.map(sharding, state)


def constrain_similarity_rows(sims: jax.Array, mesh: Mesh) -> jax.Array:
  """Pin ``(R, B, C)`` similarity rows to ``P(None, 'data', None)`` inside a jitted function.

  Each device then computes its own anchors' rows (B / D of them) against all C global columns;
  the columns' features are all-gathered (O(B d) traffic), never the ``B x C`` matrix.
  """
  return jax.lax.with_sharding_constraint(sims, NamedSharding(mesh, P(None, DATA, None)))


def constrain_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
  """Pin a ``(B, ...)`` array (e.g. features) to the batch sharding inside a jitted function."""
  return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


# ----------------------------------------------------------------------------- per-sample state
# Created directly sharded: ``objectives.init_unimodal_state`` / ``init_bimodal_state`` build plain
# arrays; called eagerly for N = 1e9 they would first materialise every ``(N,)`` array on one
# device. Here the same functions run inside ``jax.jit`` with ``out_shardings``, so each device
# only ever allocates its own ``N_pad / D`` slice (the compiled initialiser holds no N_pad buffer).

ObjectiveConfig = objectives.UnimodalConfig | objectives.BimodalConfig


def init_per_sample_state(num_samples_padded: int, config: ObjectiveConfig) -> Any:
  """Unsharded fresh state of the objective ``config`` belongs to (use inside a jit)."""
  if isinstance(config, objectives.UnimodalConfig):
    return objectives.init_unimodal_state(num_samples_padded, config)
  if isinstance(config, objectives.BimodalConfig):
    return objectives.init_bimodal_state(num_samples_padded, config)
  raise TypeError(f"config must be a UnimodalConfig or BimodalConfig, got {type(config).__name__}.")


def per_sample_state_shardings(num_samples: int, config: ObjectiveConfig, mesh: Mesh) -> Any:
  """The ``NamedSharding`` pytree of the per-sample state for ``num_samples`` samples.

  Leaves of length N_pad = ``padded_size(num_samples, mesh)`` get ``P('data')``; the shared
  threshold's ``(1,)`` leaves are replicated.
  """
  padded = padded_size(num_samples, mesh)
  abstract = jax.eval_shape(lambda: init_per_sample_state(padded, config))
  return per_sample_shardings(abstract, mesh, padded)


def sharded_initializer(num_samples: int, config: ObjectiveConfig, mesh: Mesh):
  """The jitted, argument-free initialiser behind :func:`init_per_sample_state_sharded`.

  Exposed so tests can read its compiled HLO (no N_pad-sized buffer on any device).
  """
  padded = padded_size(num_samples, mesh)
  shardings = per_sample_state_shardings(num_samples, config, mesh)
  return jax.jit(lambda: init_per_sample_state(padded, config), out_shardings=shardings)


def init_per_sample_state_sharded(num_samples: int, config: ObjectiveConfig, mesh: Mesh) -> Any:
  """Fresh ``UnimodalState`` / ``BimodalState`` (by config type) of ``(N_pad,)`` sharded leaves."""
  return sharded_initializer(num_samples, config, mesh)()


def init_unimodal_state_sharded(num_samples: int, config: objectives.UnimodalConfig,
                                mesh: Mesh) -> objectives.UnimodalState:
  """``init_unimodal_state`` for N_pad samples, each ``(N_pad,)`` leaf sharded ``P('data')``."""
  if not isinstance(config, objectives.UnimodalConfig):
    raise TypeError("init_unimodal_state_sharded needs a UnimodalConfig.")
  return init_per_sample_state_sharded(num_samples, config, mesh)


def init_bimodal_state_sharded(num_samples: int, config: objectives.BimodalConfig,
                               mesh: Mesh) -> objectives.BimodalState:
  """``init_bimodal_state`` for N_pad samples, each ``(N_pad,)`` leaf sharded ``P('data')``."""
  if not isinstance(config, objectives.BimodalConfig):
    raise TypeError("init_bimodal_state_sharded needs a BimodalConfig.")
  return init_per_sample_state_sharded(num_samples, config, mesh)
