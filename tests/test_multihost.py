"""Two processes on localhost (4 fake CPU devices each) match one process with 8 devices.

Each process joins ``jax.distributed`` through a local coordinator on a free port, builds the
global 8-device mesh, loads only its own rows of every global batch
(``distributed.local_batch_rows``), assembles them with ``global_batch_from_local`` (indices
stay global) and runs 3 SogCLR + GloFND steps with Adam (lambda takes Adam steps and masks from
the first step). The single-process reference runs the same steps on 8 devices in one process.
Loss, parameters and the whole per-sample state (gathered to the hosts) must agree to float32
reduction order.
"""

import socket

import numpy as np
import pytest

import scaling_subprocess
from glofnd_jax import distributed

TOL = dict(rtol=1e-5, atol=1e-6)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
  port = _free_port()
  workers = [scaling_subprocess.start("multihost", tmp_path / f"process{p}.npz", p, 2, port,
                                      devices=4) for p in range(2)]
  reference = scaling_subprocess.start("single", tmp_path / "single.npz", devices=8)
  for process in workers + [reference]:
    scaling_subprocess.finish(process, timeout=240)

  single = np.load(tmp_path / "single.npz")
  for p in range(2):
    result = np.load(tmp_path / f"process{p}.npz")
    # Each process fed its own half of the batch: process p holds rows [8p, 8p + 8).
    np.testing.assert_array_equal(result["local_rows"], np.arange(8 * p, 8 * p + 8))
    compared = [k for k in single.files if k in result.files]
    assert any(k.startswith("per_sample") for k in compared)
    assert any(k.startswith("params") for k in compared)
    assert [k for k in single.files if k.startswith("loss/")] == ["loss/0", "loss/1", "loss/2"]
    assert set(single.files) <= set(result.files)
    for key in compared:
      np.testing.assert_allclose(result[key], single[key], err_msg=f"process {p}: {key}", **TOL)
    # Not vacuous: lambda took Adam steps (moments moved) and u was written.
    moved = [k for k in compared
             if k.startswith("per_sample") and np.any(result[k] != result[k][0])]
    assert len(moved) == 4, f"only {moved} moved"


def test_launcher_detection():
  assert distributed.detected_launcher({}) is None
  assert distributed.detected_launcher({"JAX_COORDINATOR_ADDRESS": "h:1234"}) == "coordinator"
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  assert distributed.detected_launcher(slurm) == "slurm"
  assert distributed.detected_launcher(dict(slurm, SLURM_NTASKS="1")) is None  # one task: local
  assert distributed.detected_launcher({"OMPI_MCA_orte_hnp_uri": "x",
                                        "OMPI_COMM_WORLD_SIZE": "4"}) == "openmpi"
  assert distributed.detected_launcher({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"


def test_single_process_initialize_is_a_no_op():
  # No launcher in this environment (pytest): nothing is started, jax stays single-process.
  if distributed.detected_launcher() is not None:
    pytest.skip("running under a multi-process launcher")
  assert distributed.initialize() is False
  assert distributed.initialize(num_processes=1) is False
