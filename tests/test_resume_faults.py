"""Nothing lost, nothing duplicated: resume faults and what they must (not) change.

In process, on the tiny digits recipe: a SIGTERM before the first step, a refused resume, a
second run on a workdir in use, an unwritable checkpoint folder, damaged checkpoints (each falls
back to the older one), torn metrics and snapshot files, and a run whose newest checkpoint was
lost (as after kill -9 between checkpoints). In subprocesses (``slow``): ``glofnd-jax train``
killed with SIGKILL and started again.
"""

import json
import os
import shutil
import signal

import jax.numpy as jnp
import numpy as np
import pytest
import train_cli
from test_train import DIGITS, load_config, tiny

from glofnd_jax.training import checkpoint as checkpoint_lib
from glofnd_jax.training import loop, plots
from glofnd_jax.training import metrics as metrics_lib
from glofnd_jax.training import task as task_lib


def test_sigterm_before_the_loop_exits_cleanly_and_writes_no_checkpoint(tmp_path, monkeypatch):
  build_run = task_lib.build_run

  def build_then_sigterm(config, workdir):
    run = build_run(config, workdir)
    os.kill(os.getpid(), signal.SIGTERM)  # the guard is already listening: only a flag is set
    return run

  monkeypatch.setattr(task_lib, "build_run", build_then_sigterm)
  before = signal.getsignal(signal.SIGTERM)
  assert loop.train_and_evaluate(tiny(load_config(DIGITS)), tmp_path) == {}
  assert signal.getsignal(signal.SIGTERM) is before
  checkpoints = tmp_path / "checkpoints"
  assert not checkpoints.exists() or not any(p.name.isdigit() for p in checkpoints.iterdir())
  assert not (tmp_path / "metrics.jsonl").exists()
  assert '"status": "preempted", "step": 0' in (tmp_path / loop.STATUS_FILE).read_text()


def test_refused_resume_leaves_the_config_file_alone(tmp_path):
  saved = tiny(load_config(DIGITS))
  run = task_lib.build_run(saved, tmp_path)
  (tmp_path / loop.CONFIG_FILE).write_text("the saved run's config\n")
  checkpointer = checkpoint_lib.Checkpointer(
      tmp_path / "checkpoints",
      fingerprint=checkpoint_lib.config_fingerprint(saved, run.num_samples))
  checkpointer.save(4, {"u": jnp.zeros(4)})
  checkpointer.close()
  changed = tiny(load_config(DIGITS))
  changed.model.proj_dim = 32
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError):
    loop.train_and_evaluate(changed, tmp_path)
  assert (tmp_path / loop.CONFIG_FILE).read_text() == "the saved run's config\n"


def test_metrics_cut_back_to_the_restored_step_and_torn_line_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6, 8)]
  path.write_text("".join(rows) + '{"step": 10, "lo')  # killed while writing step 10
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=False, first_step=4)
  writer.write(6, {"loss": 0.5})
  writer.close()
  assert path.read_text() == "".join(rows[:2]) + json.dumps({"step": 6, "loss": 0.5}) + "\n"
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


def test_killed_between_checkpoints_then_resumed_logs_every_step_once(tmp_path):
  """A run that got to step 8 but whose last checkpoint is step 4 (the step-8 one never made
  it to disk, as after a kill -9) resumes from 4 and ends with the logs of a straight run."""
  config = tiny(load_config(DIGITS), epochs=3)  # 12 steps, 4 per epoch
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


def test_a_second_run_on_a_workdir_in_use_is_refused_at_once(tmp_path):
  held = loop.lock_workdir(tmp_path)  # another run holds the workdir
  try:
    with pytest.raises(RuntimeError, match="is in use by another run .*use another --workdir"):
      loop.train_and_evaluate(tiny(load_config(DIGITS)), tmp_path)
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


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_resume_matches_a_straight_run(tmp_path):
  """``glofnd-jax train`` killed with SIGKILL after step 4 was logged (checkpoints every 3
  steps) and started again ends with the straight run's state, metrics and lambda snapshots."""
  cache = tmp_path / "compilation_cache"
  overrides = ("--config.epochs=3", "--config.lambda_snapshot_every_epochs=1", "--noevaluate")
  killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
  killed = train_cli.start(killed_dir, *overrides, cache_dir=cache)
  train_cli.wait_until_logged(killed, killed_dir, 4)
  killed.kill()
  killed.wait()
  straight = train_cli.start(straight_dir, *overrides, cache_dir=cache)
  train_cli.run(killed_dir, *overrides, cache_dir=cache)
  train_cli.finish(straight)
  step_a, arrays_a = train_cli.read_state(straight_dir)
  step_b, arrays_b = train_cli.read_state(killed_dir)
  assert step_a == step_b == 12
  assert not [k for k in arrays_a if not (arrays_a[k] == arrays_b[k]).all()]
  assert _logged(killed_dir) == _logged(straight_dir)
  with np.load(killed_dir / "lambda_snapshots.npz") as a, \
       np.load(straight_dir / "lambda_snapshots.npz") as b:
    np.testing.assert_array_equal(a["counts"], b["counts"])
