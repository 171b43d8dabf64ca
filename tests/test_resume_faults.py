"""Nothing lost, nothing duplicated: resume faults and what they must (not) change.

In process, on the tiny digits recipe: a SIGTERM before the first step, a refused resume, a
second run on a workdir in use, an unwritable checkpoint folder, damaged checkpoints and data
positions (each falls back to the older one), torn metrics and snapshot files, a run whose newest
checkpoint was lost (as after kill -9 between checkpoints), a resume with another seed. In
subprocesses (``slow``): ``glofnd-jax train`` killed with SIGKILL between checkpoints, in the
middle of a checkpoint write and during the evaluation, and started again, compared with one
uninterrupted run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import data
from glofnd_jax.training import checkpoint as checkpoint_lib
from glofnd_jax.training import loop, plots
from glofnd_jax.training import metrics as metrics_lib
from glofnd_jax.training import task as task_lib


def test_sigterm_before_the_loop_exits_cleanly_and_writes_no_checkpoint(tmp_path, monkeypatch,
                                                                         tiny_unimodal):
  build_run = task_lib.build_run

  def build_then_sigterm(config, workdir):
    run = build_run(config, workdir)
    os.kill(os.getpid(), signal.SIGTERM)  # the guard is already listening: only a flag is set
    return run

  monkeypatch.setattr(task_lib, "build_run", build_then_sigterm)
  before = signal.getsignal(signal.SIGTERM)
  assert loop.train_and_evaluate(tiny_unimodal(), tmp_path) == {}
  assert signal.getsignal(signal.SIGTERM) is before
  checkpoints = tmp_path / "checkpoints"
  assert not checkpoints.exists() or not any(p.name.isdigit() for p in checkpoints.iterdir())
  assert not (tmp_path / "metrics.jsonl").exists()
  assert '"status": "preempted", "step": 0' in (tmp_path / loop.STATUS_FILE).read_text()


def test_refused_resume_leaves_the_config_file_alone(tmp_path, tiny_unimodal):
  saved = tiny_unimodal()
  run = task_lib.build_run(saved, tmp_path)
  (tmp_path / loop.CONFIG_FILE).write_text("the saved run's config\n")
  checkpointer = checkpoint_lib.Checkpointer(
      tmp_path / "checkpoints",
      fingerprint=checkpoint_lib.config_fingerprint(saved, run.num_samples))
  checkpointer.save(4, {"u": jnp.zeros(4)})
  checkpointer.close()
  changed = tiny_unimodal()
  changed.model.proj_dim = 32
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError):
    loop.train_and_evaluate(changed, tmp_path)
  assert (tmp_path / loop.CONFIG_FILE).read_text() == "the saved run's config\n"


def _restore_and_close(checkpointer, *iterator, newest_complete: bool = False):
  """``(state, step)`` restored onto ``{"u": zeros(4)}``; the checkpointer is closed after."""
  try:
    restore = checkpointer.restore_newest_complete if newest_complete else checkpointer.restore
    return restore({"u": jnp.zeros(4)}, *iterator)
  finally:
    checkpointer.close()


def test_resume_with_another_seed_is_refused_unless_allowed(tmp_path, capsys, tiny_unimodal):
  run = task_lib.build_run(tiny_unimodal(), tmp_path)  # seed 0
  checkpointer = run.checkpointer()
  checkpointer.save(4, {"u": jnp.arange(4.0)})
  checkpointer.close()
  run.config.seed = 1
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match=r"seed: checkpoint 0, now 1\..*config.allow_seed_change=True"):
    _restore_and_close(run.checkpointer())
  run.config.allow_seed_change = True
  state, step = _restore_and_close(run.checkpointer())
  assert step == 4
  np.testing.assert_array_equal(state["u"], np.arange(4.0))
  assert ("resuming checkpoint step 4 with seed=1 (it was written with 0), as allowed: from the "
          "resumed step the data order") in capsys.readouterr().out
  run.config.model.proj_dim = 32  # the flag allows the seed only
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError, match="model.proj_dim"):
    _restore_and_close(run.checkpointer())


def test_checkpoint_without_a_saved_seed_still_restores(tmp_path):
  """Checkpoints written before the seed was fingerprinted are not refused for lacking it."""
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"batch_size": 16})
  checkpointer.save(2, {"u": jnp.arange(4.0)})
  checkpointer.close()
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"batch_size": 16, "seed": 3})
  assert _restore_and_close(checkpointer)[1] == 2


def test_metrics_cut_back_to_the_restored_step_and_torn_line_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6, 8)]
  path.write_text("".join(rows) + '{"step": 10, "lo')  # killed while writing step 10
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=False, first_step=4)
  writer.write(6, {"loss": 0.5})
  writer.close()
  # the writer logs under the namespaced name (train/loss); the rows before it are kept as they are
  assert path.read_text() == "".join(rows[:2]) + json.dumps({"step": 6, "train/loss": 0.5}) + "\n"
  metrics_lib.cut_metrics(path, 0)  # a fresh start keeps no row of a run killed before saving
  assert path.read_text() == ""


def test_lambda_snapshots_replace_later_epochs_and_survive_a_torn_file(tmp_path):
  lam = np.linspace(-1, 1, 50)
  for epoch in (1, 2, 3, 2, 3):  # resumed in epoch 1 after epochs 2 and 3 had been written
    plots.save_lambda_snapshot(tmp_path, epoch, lam * epoch)
  with np.load(tmp_path / "lambda_snapshots.npz") as saved:
    np.testing.assert_array_equal(saved["epochs"], [1, 2, 3])
    np.testing.assert_array_equal(saved["counts"][2], plots.lambda_histogram(lam * 3))
  path = tmp_path / "lambda_snapshots.npz"
  path.write_bytes(path.read_bytes()[:40])  # torn
  plots.save_lambda_snapshot(tmp_path, 4, lam)
  with np.load(path) as saved:
    np.testing.assert_array_equal(saved["epochs"], [4])
  assert (tmp_path / "lambda_snapshots.npz.corrupt").exists()


def _logged(workdir) -> list[dict]:
  """metrics.jsonl rows without the timing column (the only non-deterministic one)."""
  return [{k: v for k, v in row.items() if k != "train/images_per_sec"}
          for row in metrics_lib.read_metrics(workdir)]


def test_killed_between_checkpoints_then_resumed_logs_every_step_once(tmp_path, tiny_unimodal):
  """A run that got to step 8 but whose last checkpoint is step 4 (the step-8 one never made
  it to disk, as after a kill -9) resumes from 4 and ends with the logs of a straight run."""
  config = tiny_unimodal(epochs=3)  # 12 steps, 4 per epoch
  config.checkpoint_every_steps = 4
  config.lambda_snapshot_every_epochs = 1
  loop.train_and_evaluate(config, tmp_path / "straight", evaluate=False)
  killed = tmp_path / "killed"
  loop.train_and_evaluate(config, killed, evaluate=False, stop_after_steps=8)
  shutil.rmtree(killed / "checkpoints" / "8")
  with (killed / "metrics.jsonl").open("a") as torn:
    torn.write('{"step": 9, "loss"')
  loop.train_and_evaluate(config, killed, evaluate=False)
  assert _logged(killed) == _logged(tmp_path / "straight")
  assert [r["step"] for r in _logged(killed)] == sorted({r["step"] for r in _logged(killed)})
  with np.load(killed / "lambda_snapshots.npz") as a, \
       np.load(tmp_path / "straight" / "lambda_snapshots.npz") as b:
    np.testing.assert_array_equal(a["epochs"], b["epochs"])
    np.testing.assert_array_equal(a["counts"], b["counts"])


def _truncate_array_files(step_dir):
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:5])


def _delete_array_files(step_dir):
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.unlink()


CORRUPTIONS = {
    "truncated_arrays": _truncate_array_files,
    "deleted_arrays": _delete_array_files,
    "garbage_metadata": lambda d: (d / "state" / "_METADATA").write_text("{not json"),
    "garbage_fingerprint": lambda d: (d / "fingerprint" / "metadata").write_text("\x00garbage"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(tmp_path, corruption, capsys):
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"batch_size": 16})
  checkpointer.save(2, {"u": jnp.arange(4.0)})
  checkpointer.save(4, {"u": jnp.arange(4.0) + 1})
  checkpointer.close()
  CORRUPTIONS[corruption](directory / "4")
  (directory / "6").mkdir()  # an empty newer step folder
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"batch_size": 16})
  try:
    state, step = checkpointer.restore_newest_complete({"u": jnp.zeros(4)})
  finally:
    checkpointer.close()
  assert step == 2
  np.testing.assert_array_equal(state["u"], np.arange(4.0))
  moved = sorted(p.name for p in (directory / "corrupt").iterdir())
  assert "4-0" in moved and not (directory / "4").exists()
  out = capsys.readouterr().out
  assert f"checkpoint step 4 in {directory} does not restore (" in out
  assert f"moved to {directory / 'corrupt' / '4-0'}" in out


def _position_iterator(steps: int = 0):
  iterator = data.make_iterator(data.SyntheticSource(num_samples=32, image_shape=(4, 4, 1)),
                                global_batch_size=8, seed=3, read_threads=0)
  for _ in range(steps):
    next(iterator)
  return iterator


@pytest.mark.parametrize("position", ["{\"last_seen_indi", "{\"no_such_field\": 1}", "[]"])
def test_corrupt_data_position_of_the_newest_checkpoint_falls_back(tmp_path, position, capsys):
  """Torn or meaningless JSON in the newest checkpoint's data-iterator position: the older
  checkpoint restores, state and data position together (the next batch is the one after it)."""
  directory = tmp_path / "checkpoints"
  iterator = _position_iterator()
  checkpointer = checkpoint_lib.Checkpointer(directory, position_is_global=True)
  for step in (2, 4):
    for _ in range(2):
      next(iterator)
    checkpointer.save(step, {"u": jnp.arange(4.0) + step}, iterator)
  checkpointer.close()
  (directory / "4" / "data" / "process_0-of-1.json").write_text(position)
  resumed = _position_iterator()
  state, step = _restore_and_close(
      checkpoint_lib.Checkpointer(directory, position_is_global=True), resumed,
      newest_complete=True)
  assert step == 2
  np.testing.assert_array_equal(state["u"], np.arange(4.0) + 2)
  np.testing.assert_array_equal(next(resumed)["index"], next(_position_iterator(2))["index"])
  assert (directory / "corrupt" / "4-0").exists()
  assert f"checkpoint step 4 in {directory} does not restore (" in capsys.readouterr().out


def test_no_checkpoint_restores_says_what_to_do(tmp_path):
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory)
  checkpointer.save(2, {"u": jnp.arange(4.0)})
  checkpointer.close()
  _delete_array_files(directory / "2")
  checkpointer = checkpoint_lib.Checkpointer(directory)
  try:
    with pytest.raises(FileNotFoundError, match="no checkpoint in .* restores .*Running the same "
                       "command again starts this run over"):
      checkpointer.restore_newest_complete({"u": jnp.zeros(4)})
  finally:
    checkpointer.close()
  assert (directory / "corrupt" / "2-0").exists()


def test_incompatible_newest_checkpoint_still_refuses(tmp_path):
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"batch_size": 16})
  checkpointer.save(2, {"u": jnp.arange(4.0)})
  checkpointer.close()
  checkpointer = checkpoint_lib.Checkpointer(directory, fingerprint={"batch_size": 32})
  try:
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError):
      checkpointer.restore_newest_complete({"u": jnp.zeros(4)})
  finally:
    checkpointer.close()
  assert (directory / "2").exists() and not (directory / "corrupt").exists()


def test_a_second_run_on_a_workdir_in_use_is_refused_at_once(tmp_path, tiny_unimodal):
  held = loop.lock_workdir(tmp_path)  # another run holds the workdir
  try:
    with pytest.raises(RuntimeError, match="is in use by another run .*use another --workdir"):
      loop.train_and_evaluate(tiny_unimodal(), tmp_path)
  finally:
    held.close()
  assert not (tmp_path / loop.CONFIG_FILE).exists()
  loop.lock_workdir(tmp_path).close()  # released: the next run may take it


def test_an_unwritable_checkpoint_directory_fails_the_save_at_once(tmp_path):
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory)
  try:
    checkpointer.save(2, {"u": jnp.arange(4.0)})
    checkpointer.wait()
    shutil.move(directory / "2", tmp_path / "kept")
    shutil.rmtree(directory)
    directory.write_text("not a folder")  # as unwritable as a read-only mount, even for root
    with pytest.raises(OSError, match=f"cannot save checkpoint step 4: {directory} is not "
                       "writable .*previous checkpoints are kept"):
      checkpointer.save(4, {"u": jnp.arange(4.0)})
  finally:
    directory.unlink()
    directory.mkdir()
    checkpointer.close()


# The subprocess runs below: 12 steps (3 epochs of 4), checkpoints every 3 steps.
KILLED_RUN = ("--config.epochs=3", "--config.lambda_snapshot_every_epochs=1")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, train_cli):
  """``(workdir, compilation cache)`` of one uninterrupted, evaluated run that the kill -9
  tests compare with (they share its cache: each program is compiled once)."""
  root = tmp_path_factory.mktemp("straight")
  train_cli.run(root / "run", *KILLED_RUN, cache_dir=root / "compilation_cache")
  return root / "run", root / "compilation_cache"


def _same_outputs_as(train_cli, straight_dir, killed_dir) -> None:
  """Final state bit for bit, metric rows (but timing) and lambda snapshots."""
  step_a, arrays_a = train_cli.read_state(straight_dir)
  step_b, arrays_b = train_cli.read_state(killed_dir)
  assert step_a == step_b == 12
  assert not [k for k in arrays_a if not (arrays_a[k] == arrays_b[k]).all()]
  assert _logged(killed_dir) == _logged(straight_dir)
  with np.load(killed_dir / "lambda_snapshots.npz") as a, \
       np.load(straight_dir / "lambda_snapshots.npz") as b:
    np.testing.assert_array_equal(a["epochs"], b["epochs"])
    np.testing.assert_array_equal(a["counts"], b["counts"])


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_resume_matches_a_straight_run(tmp_path, straight_run,
                                                                       train_cli):
  """``glofnd-jax train`` killed with SIGKILL after step 4 was logged (checkpoints every 3
  steps) and started again ends with the straight run's state, metrics and lambda snapshots."""
  straight_dir, cache = straight_run
  killed_dir = tmp_path / "killed"
  killed = train_cli.start(killed_dir, *KILLED_RUN, "--noevaluate", cache_dir=cache)
  train_cli.wait_until_logged(killed, killed_dir, 4)
  killed.kill()
  killed.wait()
  killed.stdout.close()
  train_cli.run(killed_dir, *KILLED_RUN, "--noevaluate", cache_dir=cache)
  _same_outputs_as(train_cli, straight_dir, killed_dir)

# `glofnd-jax train` with a fault hook: $FAULT=save:S stops forever inside the data-position
# write of step S's checkpoint (the save's temporary folder exists, it is not committed);
# $FAULT=eval stops forever after the first features of the evaluation are computed. Either way it
# first creates $FAULT_MARKER, so the test knows when to kill -9.
HANGING_TRAIN = """
import os, pathlib, sys, time
fault, marker = os.environ["FAULT"], pathlib.Path(os.environ["FAULT_MARKER"])

def hang():
  marker.write_text(fault)
  time.sleep(600)

if fault.startswith("save:"):
  import grain
  handler, prefix = grain.checkpoint.CheckpointHandler, fault[5:] + ".orbax-checkpoint-tmp"
  write = handler.save
  def save(self, directory, *args, **kwargs):
    write(self, directory, *args, **kwargs)
    if directory.parent.name.startswith(prefix):
      hang()
  handler.save = save
else:
  from glofnd_jax.evaluation import unimodal
  features = unimodal.run_features
  unimodal.run_features = lambda *args, **kwargs: (features(*args, **kwargs), hang())
from glofnd_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _kill_9_at(train_cli, fault: str, workdir, overrides, cache, tmp_path) -> None:
  """Run ``glofnd-jax train`` until the fault hook hangs it, then SIGKILL it."""
  marker = tmp_path / f"hung_{fault.replace(':', '_')}"
  command = [sys.executable, "-c", HANGING_TRAIN,
             *train_cli.command(workdir, *overrides)[3:]]
  process = subprocess.Popen(
      command, env={**train_cli.env(cache_dir=cache), "FAULT": fault, "FAULT_MARKER": str(marker)},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 240
  while not marker.exists():
    assert process.poll() is None, train_cli.finish(process)
    assert time.monotonic() < deadline, f"{fault} was never reached"
    time.sleep(0.02)
  process.kill()
  process.wait()
  process.stdout.close()


@pytest.mark.slow
def test_kill_9_mid_save_and_during_evaluation_then_resume_matches_a_straight_run(
    tmp_path, straight_run, train_cli):
  """Killed with SIGKILL while writing the step-6 checkpoint (the last complete one is step 3),
  resumed and killed again during the evaluation, resumed again: the same final state, metrics,
  lambda snapshots and results.json as a run never stopped."""
  straight_dir, cache = straight_run
  killed_dir = tmp_path / "killed"
  _kill_9_at(train_cli, "save:6", killed_dir, KILLED_RUN, cache, tmp_path)
  checkpoints = killed_dir / "checkpoints"
  assert list(checkpoints.glob("6.orbax-checkpoint-tmp*"))  # killed mid-save
  assert not (checkpoints / "6").exists() and (checkpoints / "3").exists()
  _kill_9_at(train_cli, "eval", killed_dir, KILLED_RUN, cache, tmp_path)
  assert json.loads((killed_dir / loop.STATUS_FILE).read_text())["status"] == "finished"
  assert not (killed_dir / "results.json").exists()
  train_cli.run(killed_dir, *KILLED_RUN, cache_dir=cache)
  _same_outputs_as(train_cli, straight_dir, killed_dir)
  assert ((killed_dir / "results.json").read_text()
          == (straight_dir / "results.json").read_text())
