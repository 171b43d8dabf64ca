"""Non-finite values: "stop" ends the run naming the step and the arrays, keeping the last good
checkpoint; "skip" leaves the state untouched by a bad batch (inside the jitted step) and counts it.

The end-to-end runs feed float images (which the augmentation takes as values in [0, 1]) and
put a NaN into one image of one batch, as a corrupt decoded file would: BatchNorm spreads it to
the whole batch, so the loss, the gradients and the parameters become NaN at that step. (Lambda
and ``u`` stay finite there: a NaN similarity compares as "above every threshold", so every
negative of the batch is flagged, and a row with no kept negative leaves its ``u`` unchanged.
Their flags are tested on a state with NaN put into it.)
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scaling_worker import IN_DIM, NUM_SAMPLES, TinyEncoder, global_batches, threshold_config
from test_hlo import per_sample_copies

from glofnd_jax import distributed, objectives, sharding
from glofnd_jax.training import checkpoint as checkpoint_lib
from glofnd_jax.training import loop
from glofnd_jax.training import metrics as metrics_lib
from glofnd_jax.training import nonfinite as nonfinite_lib
from glofnd_jax.training import step as ts
from glofnd_jax.training import task as task_lib
from glofnd_jax.training.unimodal import UnimodalRun

POISONED_STEP = 7  # the 7th step of a run that starts at step 0


class PoisonedRun(UnimodalRun):
  """The unimodal run, but one image of the batch of step ``POISONED_STEP`` is NaN."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.batches_fed = 0

  def global_batch(self, local: dict) -> dict:
    self.batches_fed += 1
    image = np.asarray(local["image"], np.float32) / 255.0  # float for every batch: one compile
    if self.batches_fed == POISONED_STEP:
      image[0, 0, 0, 0] = np.nan
    return distributed.global_batch_from_local(
        {"image": image, "index": local["index"], "label": local["label"]}, self.mesh)


def _poisoned_config(tiny_unimodal, policy: str):
  config = tiny_unimodal(epochs=3)  # 12 steps; checkpoints at 3, 6, 9
  config.task = "poisoned"
  config.nonfinite = policy
  config.glofnd.start_update_epoch = 0  # lambda and u are read and written from the first step
  config.glofnd.start_mask_epoch = 0
  return config


@pytest.fixture
def poisoned_task(monkeypatch):
  monkeypatch.setitem(task_lib.TASKS, "poisoned", f"{__name__}:PoisonedRun")


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)  # the step donates its input


def _leaves(state) -> dict:
  keep = {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "per_sample": state.per_sample}
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(keep)[0]}


def test_skip_keeps_the_state_inside_the_step_and_stop_flags_the_arrays():
  mesh = sharding.make_mesh()
  config = objectives.UnimodalConfig(loss="sogclr", thresholds=threshold_config(
      init_quantile=False, lam_init=0.2, start_mask=0))
  model, tx = TinyEncoder(), optax.sgd(0.1)
  good_1, good_2 = global_batches("unimodal", False, steps=2)
  bad = dict(good_1, view1=np.full_like(good_1["view1"], np.nan))
  kwargs = dict(num_samples=NUM_SAMPLES, global_batch=16, mesh=mesh)
  initial = ts.create_train_state(model, tx, np.zeros((2, IN_DIM), np.float32), config,
                                  NUM_SAMPLES, mesh, jax.random.key(0))

  skip = ts.make_unimodal_train_step(model, tx, config, nonfinite="skip", **kwargs)
  after_good, _ = skip(_copy(initial), good_1)
  after_bad, metrics = skip(_copy(after_good), bad)
  assert float(metrics["skipped_batches"]) == 1 and int(after_bad.skipped_batches) == 1
  assert float(metrics["nonfinite/loss"]) == 1
  assert int(after_bad.step) == 2  # the batch is consumed
  expected = _leaves(after_good)
  assert _leaves(after_bad).keys() == expected.keys()
  for name, value in _leaves(after_bad).items():
    np.testing.assert_array_equal(value, expected[name], err_msg=name)
  # Training goes on exactly as if the bad batch had never come (epoch 0 throughout, no
  # randomness in this model).
  finished, metrics = skip(_copy(after_bad), good_2)
  reference, _ = skip(_copy(after_good), good_2)
  assert float(metrics["skipped_batches"]) == 1
  for name, value in _leaves(finished).items():
    np.testing.assert_array_equal(value, _leaves(reference)[name], err_msg=name)

  # Keeping the old rows is O(batch): the compiled step still updates the (donated) per-sample
  # arrays in place, with no copy of them (the check of tests/test_hlo.py, on this step).
  hlo = skip.lower(initial, good_2).compile().as_text()
  rows = sharding.padded_size(NUM_SAMPLES, mesh)
  assert re.search(rf"f32\[{rows}\]\{{0\}} parameter\(", hlo), "no per-sample parameter found"
  assert not per_sample_copies(hlo, rows)

  stop = ts.make_unimodal_train_step(model, tx, config, nonfinite="stop", **kwargs)
  _, metrics = stop(_copy(after_good), bad)
  flagged = {k for k, v in metrics.items() if k.startswith("nonfinite/") and float(v)}
  assert {"nonfinite/loss", "nonfinite/gradients", "nonfinite/params"} <= flagged
  _, metrics = stop(_copy(after_good), good_2)
  assert not any(float(v) for k, v in metrics.items() if k.startswith("nonfinite/"))
  assert "skipped_batches" not in metrics


def test_flags_name_lambda_and_u_rows_of_the_batch(tmp_path):
  mesh = sharding.make_mesh()
  config = objectives.UnimodalConfig(loss="sogclr", thresholds=threshold_config())
  state = ts.create_train_state(TinyEncoder(), optax.sgd(0.1), np.zeros((2, IN_DIM), np.float32),
                                config, NUM_SAMPLES, mesh, jax.random.key(0))
  batch = {"index": np.array([3, 9, 27, 40], np.int32)}
  metrics = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}
  lam = state.per_sample.thresholds[0].lam
  u = state.per_sample.loss[0].u
  padded = sharding.padded_size(NUM_SAMPLES, mesh)

  def flagged(lam, u):
    per_sample = state.per_sample.replace(
        thresholds=(state.per_sample.thresholds[0].replace(lam=lam),),
        loss=(state.per_sample.loss[0].replace(u=u),))
    flags = nonfinite_lib.nonfinite_flags(state.replace(per_sample=per_sample), metrics, batch, padded)
    return sorted(name for name, flag in flags.items() if flag)

  assert flagged(lam, u) == []
  assert flagged(lam.at[27].set(jnp.nan), u.at[40].set(jnp.inf)) == [
      "per_sample.loss[0].u", "per_sample.thresholds[0].lam"]
  # Rows outside the batch are not read: a step writes only its batch rows.
  assert flagged(lam.at[5].set(jnp.nan), u) == []

  monitor = nonfinite_lib.Monitor("stop")
  monitor.add(11, {"loss": 1.0, "nonfinite/loss": jnp.float32(0),
                   "nonfinite/per_sample.thresholds[0].lam": jnp.float32(1)})
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  try:
    with pytest.raises(FloatingPointError, match=r"at step 11 in: per_sample\.thresholds\[0\]"
                                                 r"\.lam\. .*no checkpoint had been saved yet"):
      monitor.check(checkpointer)
  finally:
    checkpointer.close()


def test_stop_names_step_and_array_and_keeps_the_last_good_checkpoint(tmp_path, poisoned_task,
                                                                      tiny_unimodal, train_cli):
  with pytest.raises(FloatingPointError) as raised:
    loop.train_and_evaluate(_poisoned_config(tiny_unimodal, "stop"), tmp_path, evaluate=False)
  message = str(raised.value)
  assert f"at step {POISONED_STEP}" in message, message
  for array in ("loss", "gradients", "params"):
    assert f" {array}," in message or f" {array}." in message, (array, message)
  assert "last good checkpoint (step 6)" in message, message
  assert "config.nonfinite='skip'" in message, message
  # Nothing after the bad step was saved; the kept checkpoint is finite.
  step, arrays = train_cli.read_state(tmp_path)
  assert step == 6
  assert all(np.isfinite(v).all() for v in arrays.values())


def test_skip_finishes_the_run_and_counts_the_batch(tmp_path, poisoned_task, tiny_unimodal,
                                                    train_cli):
  loop.train_and_evaluate(_poisoned_config(tiny_unimodal, "skip"), tmp_path, evaluate=False)
  rows = metrics_lib.read_metrics(tmp_path)
  assert rows[-1]["step"] == 12 and rows[-1]["train/skipped_batches"] == 1
  assert all(r["train/skipped_batches"] == (r["step"] >= POISONED_STEP) for r in rows)
  step, arrays = train_cli.read_state(tmp_path)
  assert step == 12 and int(arrays["skipped_batches"]) == 1
  assert all(np.isfinite(v).all() for v in arrays.values())
