"""The training loop of every task: data -> jitted step -> logs, checkpoints, plots -> evaluation.

:func:`train_and_evaluate` is what ``glofnd-jax train`` runs. Everything per step happens in the
pure jitted step of :mod:`glofnd_jax.train_step`; this loop feeds batches, logs every
``log_every_steps`` (``metrics.jsonl``, TensorBoard, a tqdm bar with images/s), snapshots the
lambda distribution, saves orbax checkpoints (train state + data-iterator position) and resumes
from the latest complete one, then draws the plots and evaluates. What is trained comes from the
task's run class (``config.task``: :class:`glofnd_jax.run_unimodal.UnimodalRun`).
"""

from __future__ import annotations

import importlib
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from glofnd_jax import distributed, plots
from glofnd_jax.metrics_writer import MetricWriter

CONFIG_FILE = "config.json"
# config.task -> "module:class" of the task's run (imported on use).
TASKS = {"unimodal": "glofnd_jax.run_unimodal:UnimodalRun"}


def build_run(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """The run object of ``config.task`` (default ``unimodal``)."""
  task = config.get("task", "unimodal")
  if task not in TASKS:
    raise ValueError(f"config.task={task!r} is unknown; choose one of {', '.join(TASKS)}.")
  module_name, class_name = TASKS[task].split(":")
  module = importlib.import_module(module_name)
  return getattr(module, class_name)(config, workdir)


def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=1) + "\n")


def load_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: is {workdir} the work directory of a "
                            "`glofnd-jax train` run?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def host_array(x) -> np.ndarray:
  """A (possibly multi-process sharded) array as one numpy array on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _check_finite(values: dict, step: int) -> None:
  for name in ("loss", "lambda_mean", "u_mean"):
    if name in values and not np.isfinite(values[name]):
      raise FloatingPointError(f"non-finite {name}={values[name]} at step {step}; the last good "
                               "checkpoint is kept. Lower the learning rate or check the data.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, evaluate: bool = True,
                       stop_after_steps: int | None = None) -> dict:
  """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluate.

  Args:
    config: a config from ``configs/`` (see :func:`glofnd_jax.config_lib.base_config`).
    workdir: the run's directory: config, checkpoints, metrics, plots, results.
    evaluate: run the evaluation at the end (kNN, linear probe, FN precision/recall, lambda).
    stop_after_steps: stop (with a checkpoint) after this many steps in this call, for tests.

  Returns:
    The results dict (also in ``workdir/results.json``); ``{}`` when stopped early or not
    evaluated.
  """
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run = build_run(config, workdir)
  save_config(config, workdir)
  state = run.init_state()
  iterator = run.iterator()
  checkpointer = run.checkpointer()
  first_step = 0
  if checkpointer.latest_step() is not None:
    state, first_step = checkpointer.restore(state, iterator)
    print(f"resumed from step {first_step} in {checkpointer.directory}")
  step_fn = run.step_fn()
  writer = MetricWriter(workdir)
  last = min(run.total_steps, first_step + stop_after_steps) if stop_after_steps else run.total_steps
  c = config
  print(f"training {c.model.name} ({c.get('task', 'unimodal')}, detection {c.glofnd.mode}) on "
        f"{c.data.name}: {run.num_samples} samples, batch {run.batch}, {c.epochs} epochs "
        f"({run.total_steps} steps) on {run.mesh.devices.size} device(s)")
  tick, tick_step = time.perf_counter(), first_step
  bar = tqdm(total=last, initial=first_step, unit="step", disable=jax.process_index() != 0,
             dynamic_ncols=True, mininterval=2.0)
  try:
    for step in range(first_step, last):
      state, metrics = step_fn(state, run.global_batch(next(iterator)))
      done = step + 1
      if done % c.log_every_steps == 0 or done == last:
        now = time.perf_counter()
        images_per_sec = (done - tick_step) * run.batch / max(now - tick, 1e-9)
        tick, tick_step = now, done
        values = writer.write(done, {**metrics, "lr": run.schedule(step),
                                     "images_per_sec": images_per_sec})
        _check_finite(values, done)
        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{images_per_sec:.0f}")
      thresholds = run.thresholds_for_snapshot(state)
      if thresholds is not None and done % run.steps_per_epoch == 0:
        epoch = done // run.steps_per_epoch
        if epoch % c.lambda_snapshot_every_epochs == 0 or done == run.total_steps:
          lam = host_array(thresholds)[:run.num_samples]
          writer.histogram(done, "lambda", lam)
          if jax.process_index() == 0:
            plots.save_lambda_snapshot(workdir, epoch, lam)
      if done % c.checkpoint_every_steps == 0 and done != last:
        checkpointer.save(done, state, iterator)
      bar.update(1)
    if last > first_step:
      checkpointer.save(last, state, iterator, force=True)
  finally:
    bar.close()
    writer.close()
    checkpointer.close()
  if jax.process_index() == 0:
    plots.plot_run(workdir)
  if not evaluate or last < run.total_steps:
    return {}
  return run.evaluate(state)


def evaluate_workdir(workdir) -> dict:
  """``glofnd-jax eval``: rebuild the run from its saved config, restore, and evaluate."""
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  run = build_run(load_config(workdir), workdir)
  checkpointer = run.checkpointer()
  try:
    state, step = checkpointer.restore(run.init_state())
  finally:
    checkpointer.close()
  print(f"evaluating step {step} of {workdir}")
  return run.evaluate(state)
