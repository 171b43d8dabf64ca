"""The training loop of every task: data -> jitted step -> logs, checkpoints, plots -> evaluation.

:func:`train_and_evaluate` is what ``glofnd-jax train`` runs. Everything per step happens in the
pure jitted step of :mod:`glofnd_jax.train_step`; this loop feeds batches, logs every
``log_every_steps`` (``metrics.jsonl``, TensorBoard, a tqdm bar with images/s), snapshots the
lambda distribution, saves orbax checkpoints (train state + data-iterator position) and resumes
from the latest complete one, then draws the plots and evaluates. What is trained comes from the
task's run class (``config.task``: :class:`glofnd_jax.run_unimodal.UnimodalRun`).

Operating at scale (``docs/RUNNING_AT_SCALE.md``): on SIGTERM or a TPU preemption notice the
loop saves at the next step boundary and returns (exit status 0); a non-finite loss, gradient,
parameter, lambda or ``u`` stops the run before anything non-finite is saved
(``config.nonfinite="stop"``), or the step skips that batch (``"skip"``).
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from glofnd_jax import checkpoint as checkpoint_lib
from glofnd_jax import distributed, plots, preemption
from glofnd_jax.train_step import NONFINITE_PREFIX
from glofnd_jax.metrics_writer import MetricWriter

CONFIG_FILE = "config.json"
# Written when training stops: {"status": "finished" | "preempted" | "stopped", "step": ...,
# "total_steps": ...}; job scripts read it to decide whether to requeue (launch/slurm.sbatch).
STATUS_FILE = "status.json"
# config.task -> "module:class" of the task's run (imported on use).
TASKS = {"unimodal": "glofnd_jax.run_unimodal:UnimodalRun",
         "clip": "glofnd_jax.run_clip:ClipRun"}


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


def write_status(workdir: pathlib.Path, status: str, step: int, total_steps: int) -> None:
  """Write ``STATUS_FILE`` atomically (process 0): a job script never reads half a file."""
  if jax.process_index() == 0:
    path = workdir / STATUS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"status": status, "step": int(step),
                               "total_steps": int(total_steps)}) + "\n")
    os.replace(tmp, path)


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
  """Fallback for steps built without non-finite flags: check the logged means."""
  for name in ("loss", "lambda_mean", "u_mean"):
    if name in values and not np.isfinite(values[name]):
      raise FloatingPointError(f"non-finite {name}={values[name]} at step {step}; the last good "
                               "checkpoint is kept. Lower the learning rate or check the data.")


class NonFiniteMonitor:
  """Collects the step's ``nonfinite/<array>`` flags and raises on the first bad step.

  The flags stay on the device until :meth:`check`, which the loop calls before logging and
  before every save, so there is no host round trip per step and no non-finite state is ever
  saved.
  """

  def __init__(self, policy: str):
    self.policy = policy
    self.seen_flags = False
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    """Take the flags out of ``metrics`` (in place) and remember them for ``step``."""
    flags = {k[len(NONFINITE_PREFIX):]: metrics.pop(k) for k in list(metrics)
             if k.startswith(NONFINITE_PREFIX)}
    if flags:
      self.seen_flags = True
      if self.policy == "stop":
        self._pending.append((step, flags))

  def check(self, checkpointer) -> None:
    """Raise ``FloatingPointError`` naming the first non-finite step and its arrays."""
    pending, self._pending = self._pending, []
    if not pending:
      return
    for (step, _), flags in zip(pending, jax.device_get([f for _, f in pending])):
      bad = [name for name, flag in flags.items() if flag]
      if bad:
        checkpointer.wait()  # a save in flight holds an earlier, finite state: let it finish
        kept = checkpointer.latest_step()
        kept = (f"the last good checkpoint (step {kept}) in {checkpointer.directory} is kept"
                if kept is not None else "no checkpoint had been saved yet")
        raise FloatingPointError(
            f"non-finite value(s) at step {step} in: {', '.join(bad)}. The run stopped before "
            f"saving this state; {kept}. Lower the learning rate (config.optim.lr, "
            "config.glofnd.lr), check the data, or set config.nonfinite='skip' to skip such "
            "batches.")


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
  if "://" in str(workdir):
    raise ValueError(
        f"--workdir={str(workdir)!r} is a URL, but the run directory is written with file system "
        "calls (a local gs:/... directory would be created instead). Mount the bucket on every "
        "host (e.g. gcsfuse) or use a shared filesystem, and pass that path; see "
        "docs/RUNNING_AT_SCALE.md. (config.data.data_dir may be a gs:// URL.)")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run = build_run(config, workdir)
  save_config(config, workdir)
  state = run.init_state()
  iterator = run.iterator()
  checkpointer = run.checkpointer()
  if checkpointer.fingerprint is None:  # a task whose run did not set it: check resumes anyway
    checkpointer.fingerprint = checkpoint_lib.config_fingerprint(config, run.num_samples)
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
  monitor = NonFiniteMonitor(c.get("nonfinite", "stop"))
  # Listening until the last save is complete; a SIGTERM during evaluation then ends the process.
  guard = preemption.PreemptionGuard().install()
  preempted = False
  try:
    for step in range(first_step, last):
      state, metrics = step_fn(state, run.global_batch(next(iterator)))
      done = step + 1
      monitor.add(done, metrics)
      # Asked at every step but the last (which saves anyway): the processes' agreement on
      # the stopping step needs every step's number.
      preempted = done < last and guard.should_stop(done)
      periodic_save = done % c.checkpoint_every_steps == 0 and done != last
      logging = done % c.log_every_steps == 0 or done == last
      if logging or periodic_save or preempted:
        monitor.check(checkpointer)
      if logging:
        now = time.perf_counter()
        images_per_sec = (done - tick_step) * run.batch / max(now - tick, 1e-9)
        tick, tick_step = now, done
        values = writer.write(done, {**metrics, "lr": run.schedule(step),
                                     "images_per_sec": images_per_sec})
        if monitor.policy == "stop" and not monitor.seen_flags:
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
      if periodic_save or preempted:
        checkpointer.save(done, state, iterator, force=True)
      bar.update(1)
      if preempted:
        last = done
        break
    if last > first_step and not preempted:
      checkpointer.save(last, state, iterator, force=True)
  finally:
    bar.close()
    writer.close()
    checkpointer.close()  # waits for the last save: the checkpoint is complete on return
    guard.uninstall()
  status = "preempted" if preempted else "finished" if last == run.total_steps else "stopped"
  write_status(workdir, status, last, run.total_steps)
  if preempted:
    print(f"stopped at step {last} on {guard.reason}: checkpoint saved in "
          f"{checkpointer.directory}; run the same command again to resume.", flush=True)
    return {}
  if jax.process_index() == 0:
    plots.plot_run(workdir)
  if not evaluate or last < run.total_steps:
    return {}
  if jax.process_count() > 1:
    print("evaluation runs in one process: run `glofnd-jax eval --workdir "
          f"{workdir}` on one host.", flush=True)
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
