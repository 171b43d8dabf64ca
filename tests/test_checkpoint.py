"""Checkpoints: atomic (unfinished saves are never restored) and portable across device counts."""

import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import data
from glofnd_jax.training import checkpoint as checkpoint_lib


def _state(value: float):
  return {"params": jnp.full((3,), value, jnp.float32), "u": jnp.full((8,), value, jnp.float32)}


def test_unfinished_save_is_never_restored(tmp_path):
  """A step directory orbax had not finished (its temporary name) is invisible to restore."""
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"num_samples": 8})
  checkpointer.save(1, _state(1.0))
  checkpointer.save(2, _state(2.0))
  checkpointer.close()
  # What a save cut short at step 3 leaves: orbax writes into <step>.orbax-checkpoint-tmp-<time>
  # and renames it to <step> only when every item is written.
  partial = directory / "3.orbax-checkpoint-tmp-1732665600123456"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{")  # truncated
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"num_samples": 8})
  try:
    assert checkpointer.latest_step() == 2
    assert checkpointer.all_steps() == [1, 2]
    state, step = checkpointer.restore(jax.tree.map(jnp.zeros_like, _state(0.0)))
    assert step == 2
    np.testing.assert_array_equal(state["u"], np.full((8,), 2.0, np.float32))
    checkpointer.save(3, _state(3.0))  # a later save of the same step still works
    checkpointer.wait()
    assert checkpointer.latest_step() == 3
  finally:
    checkpointer.close()


def test_keeps_the_last_k(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, max_to_keep=2)
  for step in range(1, 5):
    checkpointer.save(step, _state(float(step)))
  checkpointer.close()
  assert checkpoint_lib.Checkpointer(tmp_path).all_steps() == [3, 4]


def test_per_sample_padding_may_differ_but_nothing_else(tmp_path):
  """Restoring N=6 rows padded to 8 onto a padding of 6 cuts the padding; a parameter of
  another shape is a config mismatch, named in the error."""
  fingerprint = {"num_samples": 6}
  saved = {"params": jnp.arange(3.0), "u": jnp.arange(8.0)}
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, fingerprint=fingerprint)
  checkpointer.save(1, saved)
  checkpointer.close()
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, fingerprint=fingerprint)
  try:
    state, _ = checkpointer.restore({"params": jnp.zeros(3), "u": jnp.zeros(6)})
    np.testing.assert_array_equal(state["u"], np.arange(6.0))
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                       match=r"params: checkpoint \(3,\), now \(4,\)"):
      checkpointer.restore({"params": jnp.zeros(4), "u": jnp.zeros(6)})
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError, match=r"u: checkpoint"):
      checkpointer.restore({"params": jnp.zeros(3), "u": jnp.zeros(4)})  # fewer rows than N
  finally:
    checkpointer.close()


def test_missing_or_extra_state_fields_are_named(tmp_path):
  """A checkpoint from another train-state layout (e.g. one without ``skipped_batches``, as
  older versions wrote) fails with the fields named, before orbax reads anything."""
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, fingerprint={"num_samples": 8})
  checkpointer.save(1, _state(1.0))
  checkpointer.close()
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, fingerprint={"num_samples": 8})
  try:
    newer = {**jax.tree.map(jnp.zeros_like, _state(0.0)), "skipped_batches": jnp.zeros((), jnp.int32)}
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                       match="this run needs skipped_batches, which the checkpoint lacks"):
      checkpointer.restore(newer)
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                       match="the checkpoint holds u, which this run does not build"):
      checkpointer.restore({"params": jnp.zeros(3)})
  finally:
    checkpointer.close()


def _iterator():
  source = data.SyntheticSource(num_samples=32, image_shape=(4, 4, 1))
  return data.make_iterator(source, global_batch_size=8, seed=3, read_threads=0)


def test_resume_with_another_process_count(tmp_path):
  """A save by 2 processes (both at the same step, as our pipeline guarantees) restores the data
  position in a run of 1 process; different positions are refused with the reason."""
  iterator = _iterator()
  for _ in range(3):
    next(iterator)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, position_is_global=True)
  checkpointer.save(3, _state(1.0), iterator)
  checkpointer.close()
  data_dir = tmp_path / "3" / "data"
  saved = (data_dir / "process_0-of-1.json").read_text()
  (data_dir / "process_0-of-1.json").unlink()
  for process in range(2):  # what two processes write
    (data_dir / f"process_{process}-of-2.json").write_text(saved)
  expected = _iterator()
  for _ in range(3):
    next(expected)
  resumed = _iterator()
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, position_is_global=True)
  try:
    _, step = checkpointer.restore(_state(0.0), resumed)
    assert step == 3
    np.testing.assert_array_equal(next(resumed)["index"], next(expected)["index"])
    (data_dir / "process_1-of-2.json").write_text(saved.replace("3", "2"))
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                       match="saved by 2 processes at different data positions.*resume with 2"):
      checkpointer.restore(_state(0.0), _iterator())
  finally:
    checkpointer.close()


# 68 samples: padded to 72 rows on 8 devices and 68 on 4, so the restore must re-pad.
NUM_SAMPLES = 68
# Observed: max |difference| 6e-6 (u, values ~2), relative 2e-6, after 8 steps.
RESTORE_TOL = dict(rtol=2e-5, atol=1e-5)


@pytest.mark.slow
def test_save_on_8_devices_restore_on_4_continue(tmp_path, train_cli):
  """Continuing on 4 devices from an 8-device checkpoint matches continuing on 8.

  An 8-device run saves at step 4 and goes on to step 12; a 4-device run starts from a copy of
  that step-4 checkpoint and also trains to step 12. The restore itself is exact; afterwards
  the runs sum gradients and batch statistics over 8 or 4 partial sums, so they agree to
  float32 reduction order (``RESTORE_TOL``), not bit for bit.
  """
  overrides = (f"--config.data.synthetic_num_samples={NUM_SAMPLES}", "--noevaluate",
               "--config.epochs=3", "--config.checkpoint_every_steps=4",
               "--config.keep_checkpoints=5")
  on_8, on_4 = tmp_path / "on_8", tmp_path / "on_4"
  run_8 = train_cli.start(on_8, *overrides, devices=8)
  saved = on_8 / "checkpoints" / "4"  # appears (renamed) only once complete
  deadline = time.monotonic() + 240
  while not saved.exists():
    assert run_8.poll() is None, train_cli.finish(run_8)
    assert time.monotonic() < deadline, "no step-4 checkpoint in time"
    time.sleep(0.05)
  shutil.copytree(saved, on_4 / "checkpoints" / "4")
  output_4 = train_cli.run(on_4, *overrides, devices=4)
  output_8 = train_cli.finish(run_8)
  assert "on 8 device(s)" in output_8
  assert "resumed from step 4" in output_4 and "on 4 device(s)" in output_4, output_4[-2000:]

  step_8, arrays_8 = train_cli.read_state(on_8, num_samples=NUM_SAMPLES)
  step_4, arrays_4 = train_cli.read_state(on_4, num_samples=NUM_SAMPLES)
  assert step_8 == step_4 == 12
  assert arrays_8.keys() == arrays_4.keys()
  per_sample = [k for k in arrays_8 if k.startswith("per_sample/")]
  assert per_sample and all(arrays_4[k].shape == (NUM_SAMPLES,) for k in per_sample)
  for key in arrays_8:
    np.testing.assert_allclose(arrays_4[key], arrays_8[key], err_msg=key, **RESTORE_TOL)
  # Not vacuous: lambda and u moved after the restore (GloFND updates from epoch 1).
  _, at_4 = train_cli.read_state(on_8, step=4, num_samples=NUM_SAMPLES)
  for key in ("per_sample/thresholds/0/lam", "per_sample/loss/0/u", "params/head/dense2/kernel"):
    assert not np.allclose(at_4[key], arrays_8[key]), key


def test_library_use_restores_another_padding_with_num_samples(tmp_path):
  """Without a fingerprint, ``num_samples=`` lets the per-sample padding change (another device
  count); without it the error says so, and no message speaks of a CLI workdir."""
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  checkpointer.save(1, {"params": jnp.arange(3.0), "u": jnp.arange(8.0)})
  checkpointer.close()
  target = {"params": jnp.zeros(3), "u": jnp.zeros(6)}
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  try:
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as raised:
      checkpointer.restore(target)
  finally:
    checkpointer.close()
  message = str(raised.value)
  assert "Checkpointer(num_samples=N)" in message and "another checkpoint directory" in message
  assert "--workdir" not in message and "config.json" not in message
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, num_samples=6)
  try:
    state, step = checkpointer.restore(target)
  finally:
    checkpointer.close()
  assert step == 1
  np.testing.assert_array_equal(state["u"], np.arange(6.0))
