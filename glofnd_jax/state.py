"""Per-sample state created directly sharded over the mesh's ``data`` axis.

``objectives.init_unimodal_state`` / ``init_bimodal_state`` build plain arrays; called eagerly for
N = 1e9 they would first materialise every ``(N,)`` array on one device. Here the same
functions run inside ``jax.jit`` with ``out_shardings``, so each device only ever allocates its
own ``N_pad / D`` slice (the compiled initialiser contains no N_pad-sized buffer).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from glofnd_jax import mesh as mesh_lib
from glofnd_jax import objectives

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
  padded = mesh_lib.padded_size(num_samples, mesh)
  abstract = jax.eval_shape(lambda: init_per_sample_state(padded, config))
  return mesh_lib.per_sample_shardings(abstract, mesh, padded)


def sharded_initializer(num_samples: int, config: ObjectiveConfig, mesh: Mesh):
  """The jitted, argument-free initialiser behind :func:`init_per_sample_state_sharded`.

  Exposed so tests can read its compiled HLO (no N_pad-sized buffer on any device).
  """
  padded = mesh_lib.padded_size(num_samples, mesh)
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
