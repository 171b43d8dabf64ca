"""Preemption: SIGTERM mid-run saves at the next step boundary, exits 0, and resumes exactly.

The end-to-end test trains the tiny digits recipe in subprocesses (one CPU device each, one
shared compilation cache): an uninterrupted run, and a run that gets SIGTERM once it has logged
a few steps and is then started again with the same command. Both must end with bit-identical
parameters, optimiser state, batch statistics and every per-sample array.
"""

import os
import signal

import pytest

from glofnd_jax.training import preemption

STEPS_PER_EPOCH = 4  # 64 synthetic samples, batch 16
EPOCHS = 12


def test_guard_turns_sigterm_into_a_flag_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionGuard() as guard:
    assert guard.mode == "signal"
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before kill returns
    assert guard.should_stop(2)
    assert guard.reason == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is before


def test_request_stop_without_a_signal():
  with preemption.PreemptionGuard(signals=()) as guard:
    assert not guard.should_stop(5)
    guard.request_stop()
    assert guard.should_stop(6)


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_is_bit_identical(tmp_path, train_cli):
  cache = tmp_path / "compilation_cache"
  total = EPOCHS * STEPS_PER_EPOCH
  # Periodic checkpoints far apart: the checkpoint the preempted run leaves must be its own.
  overrides = (f"--config.epochs={EPOCHS}", "--config.checkpoint_every_steps=50", "--noevaluate")
  preempted_dir = tmp_path / "preempted"
  preempted = train_cli.start(preempted_dir, *overrides, cache_dir=cache)
  train_cli.wait_until_logged(preempted, preempted_dir, 4)
  preempted.send_signal(signal.SIGTERM)
  output = train_cli.finish(preempted)  # exit status 0
  assert "stopped at step" in output and "SIGTERM" in output, output[-3000:]
  stopped_at, _ = train_cli.read_state(preempted_dir)
  assert 4 <= stopped_at < total, stopped_at
  assert stopped_at % 50, "the saved step should be the preemption's, not a periodic one"

  # Both from the compilation cache the first run filled.
  straight = train_cli.start(tmp_path / "straight", *overrides, cache_dir=cache)
  output = train_cli.run(preempted_dir, *overrides, cache_dir=cache)
  assert f"resumed from step {stopped_at}" in output, output[-3000:]
  train_cli.finish(straight)

  step_a, arrays_a = train_cli.read_state(tmp_path / "straight")
  step_b, arrays_b = train_cli.read_state(preempted_dir)
  assert step_a == step_b == total
  assert arrays_a.keys() == arrays_b.keys()
  assert any(k.startswith("per_sample/thresholds") for k in arrays_a)
  assert any(k.startswith("per_sample/loss") for k in arrays_a)
  differing = [k for k in arrays_a if not (arrays_a[k] == arrays_b[k]).all()]
  assert not differing, f"not bit-identical after resume: {differing}"
  # The metrics continue where the preempted run stopped (no step logged twice or skipped).
  logged = train_cli.logged_steps(preempted_dir)
  assert logged == sorted(set(logged)) and logged[-1] == total
