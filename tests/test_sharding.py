"""The sharded train step on 8 fake CPU devices equals the 1-device step.

One worker subprocess (8 fake devices) runs each case on an 8-device mesh and on a 1-device mesh
from the same initial state and batches: SogCLR, SimCLR (with on-device augmentation and labels)
and FastCLIP v3 with GloFND, a tiny Dense-BatchNorm-Dense encoder, 6 steps crossing an epoch
boundary (lambda initialised from the batch quantile in epoch 0, Adam steps and masking in
epoch 1), N = 61 (padded to 64 on 8 devices). Parameters use SGD, so they are linear in the
gradients and a missing cross-device gradient term would show. Tolerances are float32
reduction order.
"""

import json

import numpy as np
import pytest
import scaling_subprocess

from glofnd_jax.training import step as ts

CASES = ("sogclr", "simclr", "fastclip_v3")
STEPS = 6
NUM_SAMPLES = 61
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding") / "results.npz"
  scaling_subprocess.run("sharding", out, devices=8, timeout=240)
  return dict(np.load(out)), json.loads(out.with_suffix(".json").read_text())


def _pairs(arrays, prefix):
  keys = sorted(k for k in arrays if k.startswith(prefix))
  assert keys, f"nothing stored under {prefix}"
  return [(k, arrays[k], arrays[k.replace("/d8/", "/d1/", 1)]) for k in keys]


@pytest.mark.parametrize("case", CASES)
def test_step_matches_single_device(results, case):
  arrays, _ = results
  for group in ("metric/", "params/", "batch_stats", "per_sample"):
    for key, sharded, single in _pairs(arrays, f"{case}/d8/{group}"):
      np.testing.assert_allclose(sharded, single, err_msg=key, **TOL)
  # The comparison must cover the interesting regime: lambda learned, negatives masked.
  last = f"/{STEPS - 1}"
  kept = [v for k, v in arrays.items() if k.startswith(f"{case}/d8/metric/")
          and "kept_fraction" in k and k.endswith(last)]
  assert kept and all(v < 1.0 for v in kept), f"{case}: no negative was masked in the last step"
  lam = [v for k, v in arrays.items()
         if k.startswith(f"{case}/d8/per_sample") and k.endswith(".lam")]
  assert lam and all(np.any(v != 1.0) for v in lam), f"{case}: lambda never moved"


@pytest.mark.parametrize("case", CASES)
def test_loss_and_grad_norm_every_step(results, case):
  arrays, _ = results
  for s in range(STEPS):
    for name in ("loss", "grad_norm"):
      key = f"{case}/d8/metric/{name}/{s}"
      np.testing.assert_allclose(arrays[key], arrays[key.replace("/d8/", "/d1/")], rtol=1e-5,
                                 err_msg=key)


def test_duplicate_index_last_occurrence_wins(results):
  """Index 5 at batch positions 1 (device 0) and 14 (device 7): the row of position 14 is kept.

  The reference batch puts unused index 60 at position 1 instead; every row value is the same in
  both runs (the state was fresh), so state[5] of the duplicate run must equal state[5] of the
  reference (position 14), and differ from state[60] (position 1's values), which stays fresh.
  """
  arrays, _ = results
  for tag in ("d8", "d1"):
    prefix = f"duplicate/{tag}/per_sample_dup"
    keys = [k for k in arrays if k.startswith(prefix)]
    assert keys
    discriminating = 0
    for key in keys:
      dup, ref = arrays[key], arrays[key.replace("_dup", "_ref")]
      np.testing.assert_allclose(dup[5], ref[5], rtol=1e-6, err_msg=f"{key}[5]")
      np.testing.assert_array_equal(dup[60], dup[0], err_msg=f"{key}: row 60 must stay fresh")
      np.testing.assert_array_equal(dup[0], ref[0], err_msg=key)  # index 0 is in no batch
      discriminating += not np.isclose(ref[60], ref[5])
    assert discriminating >= 3, "positions 1 and 14 wrote equal values: the test cannot tell"
  for key in (k for k in arrays if k.startswith("duplicate/d8/")):
    np.testing.assert_allclose(arrays[key], arrays[key.replace("/d8/", "/d1/")], err_msg=key,
                               **TOL)


@pytest.mark.parametrize("case", CASES)
def test_step_compiles_once(results, case):
  arrays, _ = results
  events = [int(arrays[f"{case}/d8/compile_events/{s}"]) for s in range(STEPS)]
  assert events[0] > 0, "the listener saw no compilation at all: it is not measuring"
  assert events[1:] == [0] * (STEPS - 1), f"{case}: later steps traced or compiled again: {events}"


def test_state_created_sharded(results):
  _, info = results
  for case in ("sogclr", "fastclip_v3"):
    entry = info[case]
    assert entry["specs"] and set(entry["specs"]) == {"P('data',)"}, entry["specs"]
    assert set(map(tuple, entry["global_shapes"])) == {(64,)}  # 61 padded to a multiple of 8
    assert set(map(tuple, entry["shard_shapes"])) == {(8,)}
    assert entry["replicated_specs"] == ["P()"]
    padded = entry["init_padded"]
    hlo = entry["init_hlo"]
    assert f"[{padded // 8}]" in hlo, "per-device slices missing from the initialiser"
    assert f"[{padded}]" not in hlo, "the initialiser builds a full (N_pad,) array on a device"
  assert info["shared"] == {"lam_spec": "P()", "lam_shape": [1], "u_spec": "P('data',)"}


@pytest.mark.parametrize("global_batch,num_samples", [
    (16, 61), (32768, 1_281_167), (4096, 400_000_000), (2**31 - 1, 3), (1, 2**31 - 1), (7, 7)])
def test_epoch_at_step_is_exact_without_overflow(global_batch, num_samples):
  rng = np.random.RandomState(global_batch % 1000)
  steps = np.concatenate([np.arange(5), rng.randint(0, 2**31 - 1, 64), [2**31 - 1]])
  expected = np.array([(int(s) * global_batch) // num_samples for s in steps], dtype=object)
  got = np.asarray(ts.epoch_at_step(steps.astype(np.int32), global_batch, num_samples))
  fits = expected < 2**31  # larger epochs cannot be represented as int32
  assert fits.sum() >= 4
  np.testing.assert_array_equal(got[fits].astype(np.int64), expected[fits].astype(np.int64))
