"""Multi-process (multi-host) runs: start-up and feeding each process's slice of the batch.

Every process runs the same program on a global mesh (``jax.devices()`` lists all processes'
devices). Each loads only the batch rows its own devices hold (:func:`local_batch_rows`) and
assembles them into one global array (:func:`global_batch_from_local`). Dataset indices in the
batch are always global, so the per-sample state is addressed the same way on every process.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from glofnd_jax import sharding


def detected_launcher(environ: Mapping[str, str] | None = None) -> str | None:
  """Name of a multi-process launcher found in the environment, or ``None``.

  Recognised: ``JAX_COORDINATOR_ADDRESS`` (explicit), SLURM with more than one task, Open MPI
  with more than one rank, and Cloud TPU VMs (GKE/multislice variables, or libtpu installed:
  jax then reads the worker list from the TPU metadata). A single SLURM task is not treated as
  distributed: jax would pin it to one GPU (``SLURM_LOCALID``) and hide the others.
  """
  env = os.environ if environ is None else environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "coordinator"
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(name in env for name in slurm) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  tpu = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
  if any(env.get(name) for name in tpu):
    return "tpu"
  if environ is None and importlib.util.find_spec("libtpu") is not None:
    return "tpu-vm"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs) -> bool:
  """Start ``jax.distributed`` when this is a multi-process run; call first thing in ``main``.

  * Explicit arguments (local runs, custom launchers): passed to
    ``jax.distributed.initialize``; ``num_processes=1`` without a coordinator is a no-op.
  * No arguments: a launcher from :func:`detected_launcher` (TPU pod, SLURM, Open MPI,
    ``JAX_COORDINATOR_ADDRESS``) lets jax fill in everything; otherwise a no-op (one process).
    With ``JAX_COORDINATOR_ADDRESS`` set, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` give the
    process count and this process's id (what ``launch/local.py`` and custom launchers set);
    jax itself reads only the address.

  Extra keyword arguments (``local_device_ids``, ``initialization_timeout``, ...) go to
  ``jax.distributed.initialize``. Safe to call twice.

  Returns:
    True when the run spans several processes.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if num_processes == 1 and coordinator_address is None:
      return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return jax.process_count() > 1
  launcher = detected_launcher()
  if launcher is None:
    return False
  if launcher == "coordinator":
    kwargs = {**processes_from_env(os.environ), **kwargs}
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError:
    if launcher != "tpu-vm":
      raise
    return False  # libtpu installed but no TPU pod metadata: a single process
  return jax.process_count() > 1


def processes_from_env(env: Mapping[str, str]) -> dict:
  """``num_processes`` / ``process_id`` from ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``.

  Both or neither must be set; without them jax tries its cluster detection (SLURM, TPU, ...)
  for the missing values.
  """
  names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  given = {arg: env[name] for arg, name in names.items() if env.get(name, "") != ""}
  if not given:
    return {}
  if len(given) == 1:
    missing = next(name for arg, name in names.items() if arg not in given)
    raise ValueError(f"{missing} is not set but {names[next(iter(given))]} is: with "
                     "JAX_COORDINATOR_ADDRESS, set both JAX_NUM_PROCESSES (the process count) and "
                     "JAX_PROCESS_ID (0 .. count - 1), or neither.")
  values = {}
  for arg, text in given.items():
    try:
      values[arg] = int(text)
    except ValueError:
      raise ValueError(f"{names[arg]}={text!r} is not an integer; set it to "
                       f"{'the process count' if arg == 'num_processes' else 'this process id'}."
                       ) from None
  if values["num_processes"] < 1:
    raise ValueError(f"JAX_NUM_PROCESSES={values['num_processes']} must be >= 1: set it to the "
                     "number of processes of the job.")
  if not 0 <= values["process_id"] < values["num_processes"]:
    raise ValueError(f"JAX_PROCESS_ID={values['process_id']} must lie in [0, JAX_NUM_PROCESSES="
                     f"{values['num_processes']}); give each process its own id from 0.")
  return values


def local_batch_rows(global_batch: int, mesh: Mesh) -> slice:
  """The contiguous rows of a ``(global_batch, ...)`` batch that this process's devices hold.

  A data loader on each process reads exactly these rows of the global batch (e.g. process p of
  P reads ``[p * B / P, (p + 1) * B / P)`` for the usual device order).
  """
  sharding.check_global_batch(global_batch, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  starts, stops = [], []
  for index in batch_sharding.addressable_devices_indices_map((global_batch,)).values():
    rows = index[0]
    starts.append(rows.start or 0)
    stops.append(global_batch if rows.stop is None else rows.stop)
  start, stop = min(starts), max(stops)
  covered = sum(b - a for a, b in set(zip(starts, stops)))
  if covered != stop - start:
    raise ValueError("this process's devices hold non-contiguous batch rows; build the mesh with "
                     "glofnd_jax.sharding.make_mesh() so each process owns one contiguous block.")
  return slice(start, stop)


def global_batch_from_local(local_batch: Any, mesh: Mesh) -> Any:
  """Assemble each process's rows into global ``(B, ...)`` arrays sharded over ``data``.

  Args:
    local_batch: pytree (e.g. dict) of host arrays ``(B / P, ...)``: this process's rows of the
      global batch (:func:`local_batch_rows`), with **global** dataset indices.
    mesh: the global mesh.

  Returns:
    The same pytree of global ``jax.Array`` (leading dim B), ready for the train step. With one
    process this is a plain sharded ``device_put``.
  """
  batch_sharding = sharding.batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)), local_batch)
