"""Resume faults that must change nothing: a SIGTERM before the first step, a refused resume.

Both run ``train_and_evaluate`` in this process on the tiny digits recipe and stop before any
step is compiled, so they take seconds.
"""

import os
import signal

import jax.numpy as jnp
import pytest
from test_train import DIGITS, load_config, tiny

from glofnd_jax.training import checkpoint as checkpoint_lib
from glofnd_jax.training import loop
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
