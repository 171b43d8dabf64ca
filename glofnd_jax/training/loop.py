"""The training loop of every task: data -> jitted step -> logs, checkpoints, plots -> evaluation.

:func:`train_and_evaluate` is what ``glofnd-jax train`` runs. Everything per step happens in the
pure jitted step of :mod:`glofnd_jax.training.step`; this loop feeds batches, logs every
``log_every_steps`` (``metrics.jsonl``, TensorBoard, a tqdm bar with images/s), snapshots the
lambda distribution, saves orbax checkpoints (train state + data-iterator position) and resumes
from the latest complete one, then draws the plots and evaluates. What is trained comes from the
task's run class (``config.task``: :class:`glofnd_jax.training.unimodal.UnimodalRun`).

Operating at scale (``docs/RUNNING_AT_SCALE.md``): on SIGTERM or a TPU preemption notice the
loop saves at the next step boundary and returns (exit status 0); a non-finite loss, gradient,
parameter, lambda or ``u`` stops the run before anything non-finite is saved
(``config.nonfinite="stop"``), or the step skips that batch (``"skip"``).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from glofnd_jax import distributed, errors
from glofnd_jax.data.iterators import DevicePrefetch
from glofnd_jax.training import nonfinite as nonfinite_lib
from glofnd_jax.training import plots, preemption, preflight
from glofnd_jax.training import task as task_lib
from glofnd_jax.training.metrics import MetricWriter, log_results

CONFIG_FILE = "config.json"
# Written when training stops: {"status": "finished" | "preempted" | "stopped", "step": ...,
# "total_steps": ...}; job scripts read it to decide whether to requeue (launch/slurm.sbatch).
STATUS_FILE = "status.json"
def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=1) + "\n")


LOCK_FILE = "run.lock"


def lock_workdir(workdir: pathlib.Path):
  """Process 0 takes an exclusive ``flock`` on ``workdir/run.lock`` for the run (the open file
  is returned; closing it releases the lock). The kernel drops the lock when the process dies,
  so a killed run never leaves it stuck. Other processes take none (one lock per run)."""
  if jax.process_index() != 0:
    return None
  handle = (workdir / LOCK_FILE).open("a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.close()
    raise errors.WorkdirError(f"{workdir} is in use by another run (it holds {workdir / LOCK_FILE}); "
                       "wait for that run to end, or use another --workdir.") from None
  return handle


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
    raise errors.MissingFileError(f"{path} does not exist: is {workdir} the work directory of a "
                            "`glofnd-jax train` run?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def host_array(x) -> np.ndarray:
  """A (possibly multi-process sharded) array as one numpy array on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def open_workdir(workdir) -> pathlib.Path:
  """The run directory as a local path (created); URLs are refused with the fix."""
  if "://" in str(workdir):
    raise errors.ConfigError(
        f"--workdir={str(workdir)!r} is a URL, but the run directory is written with file system "
        "calls (a local gs:/... directory would be created instead). Mount the bucket on every "
        "host (e.g. gcsfuse) or use a shared filesystem, and pass that path; see "
        "docs/RUNNING_AT_SCALE.md. (config.data.data_dir may be a gs:// URL.)")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  return workdir


def restore_or_init(run, checkpointer, iterator):
  """``(state, first_step)``: the latest complete checkpoint (and data position), else fresh."""
  state = run.init_state()
  if checkpointer.latest_step() is None:
    return state, 0
  state, first_step = checkpointer.restore_newest_complete(state, iterator)
  print(f"resumed from step {first_step} in {checkpointer.directory}")
  return state, first_step


def describe(run) -> str:
  """The header line: what is trained, on what (image size, channels, augmentation), for how
  long, with which detection schedule, where."""
  c = run.config
  return (f"training {c.model.name} ({c.get('task', 'unimodal')}) on {c.data.name}: "
          f"{run.num_samples} samples, {run.describe_data()}, batch {run.batch}, {c.epochs} "
          f"epochs ({run.total_steps} steps) on {run.mesh.devices.size} device(s); "
          f"{preflight.detection_schedule(c.glofnd, c.epochs)}")


class Outputs:
  """What the loop writes while it trains: metric rows, the progress bar, lambda snapshots.

  Also owns the non-finite monitor, which must be checked before each log and each save.
  """

  def __init__(self, run, first_step: int, last_step: int):
    self.run = run
    self.writer = MetricWriter(run.workdir, first_step=first_step)
    self.monitor = nonfinite_lib.Monitor(run.config.get("nonfinite", "stop"))
    # smoothing=0: the rate (and ETA) is the mean over the steps since restart_clock, so the
    # first step's compilation does not stretch the estimate.
    self.bar = tqdm(total=last_step, initial=first_step, unit="step", dynamic_ncols=True,
                    disable=jax.process_index() != 0, mininterval=2.0, smoothing=0)
    self._tick, self._tick_step = time.perf_counter(), first_step

  def log(self, done: int, metrics: dict) -> None:
    now = time.perf_counter()
    images_per_sec = (done - self._tick_step) * self.run.batch / max(now - self._tick, 1e-9)
    self._tick, self._tick_step = now, done
    values = self.writer.write(done, {**metrics, "lr": self.run.schedule(done - 1),
                                      "images_per_sec": images_per_sec})
    if self.monitor.policy == "stop" and not self.monitor.seen_flags:
      nonfinite_lib.check_logged_means(values, done)
    postfix = {"epoch": f"{done / self.run.steps_per_epoch:.1f}",
               "loss": f"{values['train/loss']:.4f}"}
    for name, short in (("kept_fraction", "kept"), ("lambda_mean", "lambda")):
      if f"detector/img/{name}" in values:
        postfix[short] = f"{values[f'detector/img/{name}']:.3f}"
    postfix["img_s"] = f"{images_per_sec:.0f}"
    self.bar.set_postfix(ordered_dict=postfix)  # in this order (keyword arguments are sorted)

  def restart_clock(self) -> None:
    """After the first (compiling) step: rate and ETA count only the steps from here on."""
    if self.bar.disable:  # processes other than 0 show no bar (tqdm then keeps no clock)
      return
    self.bar.start_t, self.bar.initial = self.bar._time(), self.bar.n  # tqdm's own clock

  def snapshot(self, done: int, state) -> None:
    """At epoch ends (every ``lambda_snapshot_every_epochs`` and the last): lambda histogram."""
    run = self.run
    if done % run.steps_per_epoch:
      return
    epoch = done // run.steps_per_epoch
    if epoch % run.config.lambda_snapshot_every_epochs == 0 or done == run.total_steps:
      for side, thresholds in run.thresholds_for_snapshot(state).items():
        lam = host_array(thresholds)[:run.num_samples]
        self.writer.histogram(done, f"detector/{side}/lambda", lam)
        if jax.process_index() == 0:
          plots.save_lambda_snapshot(run.workdir, epoch, lam, side)

  def close(self) -> None:
    self.bar.close()
    self.writer.close()


def run_steps(run, state, iterator, checkpointer, guard, first_step: int, last_step: int):
  """Steps ``first_step + 1 .. last_step`` with logs, snapshots and periodic saves.

  Returns ``(state, last, preempted)``: ``last`` is the step reached (earlier on preemption,
  where a checkpoint of that step is saved before returning).
  """
  c, step_fn = run.config, run.step_fn()
  outputs = Outputs(run, first_step, last_step)
  # The next batch is on its way to the device while a step runs; checkpoints save the position
  # of the first batch not trained on.
  batches = DevicePrefetch(iterator, run.global_batch, depth=1)
  try:
    for done in range(first_step + 1, last_step + 1):
      state, metrics = step_fn(state, next(batches))
      outputs.monitor.add(done, metrics)
      # Asked at every step but the last (which saves anyway): the processes' agreement on
      # the stopping step needs every step's number.
      preempted = done < last_step and guard.should_stop(done)
      save = preempted or (done % c.checkpoint_every_steps == 0 and done != last_step)
      logging = done % c.log_every_steps == 0 or done == last_step
      if logging or save:
        outputs.monitor.check(checkpointer)
      if logging:
        outputs.log(done, metrics)
      outputs.snapshot(done, state)
      if save:
        checkpointer.save(done, state, batches, force=True)
      outputs.bar.update(1)
      if done == first_step + 1:
        outputs.restart_clock()
      if preempted:
        return state, done, True
    if last_step > first_step:
      checkpointer.save(last_step, state, batches, force=True)
    return state, last_step, False
  finally:
    outputs.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, evaluate: bool = True,
                       stop_after_steps: int | None = None) -> dict:
  """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluate.

  Args:
    config: a config from ``configs/`` (see :mod:`glofnd_jax.config`).
    workdir: the run's directory: config, checkpoints, metrics, plots, results.
    evaluate: run the evaluation at the end (kNN, linear probe, FN precision/recall, lambda).
    stop_after_steps: stop (with a checkpoint) after this many steps in this call, for tests.

  Returns:
    The results dict (also in ``workdir/results.json``); ``{}`` when stopped early or not
    evaluated.
  """
  distributed.initialize()
  # Listening from the start until the last save is complete: a SIGTERM while the run is built
  # or restored stops it before the first step (exit 0, checkpoints untouched); one during
  # evaluation ends the process.
  guard = preemption.PreemptionGuard().install()
  checkpointer = lock = None
  try:
    with errors.setup_phase():  # an error here is about the input: the CLI prints one line
      workdir = open_workdir(workdir)
      lock = lock_workdir(workdir)
      run = task_lib.build_run(config, workdir)
      notes = run.preflight(evaluate=evaluate)
      iterator, checkpointer = run.iterator(), run.checkpointer()
      state, first = restore_or_init(run, checkpointer, iterator)
    save_config(config, workdir)  # only once the resume check passed: a refused run writes none
    last = min(run.total_steps, first + stop_after_steps) if stop_after_steps else run.total_steps
    if guard.mode == "signal" and guard.should_stop(first):
      preempted, last = True, first
    else:
      print(describe(run))
      for line in notes:
        print(line)
      state, last, preempted = run_steps(run, state, iterator, checkpointer, guard, first, last)
  finally:
    if checkpointer is not None:
      checkpointer.close()  # waits for the last save: the checkpoint is complete on return
    guard.uninstall()
    if lock is not None:
      lock.close()
  return finish(run, state, first, last, preempted, guard.reason, evaluate)


def finish(run, state, first: int, last: int, preempted: bool, reason, evaluate: bool) -> dict:
  """Status file, plots, then the evaluation (single process, finished runs only)."""
  status = "preempted" if preempted else "finished" if last == run.total_steps else "stopped"
  write_status(run.workdir, status, last, run.total_steps)
  if preempted and last == first:
    print(f"stopped before step {first + 1} on {reason}; no checkpoint was written. Run the "
          "same command again to start (or resume).", flush=True)
    return {}
  if preempted:
    print(f"stopped at step {last} on {reason}: checkpoint saved in {run.workdir / 'checkpoints'}"
          "; run the same command again to resume.", flush=True)
    return {}
  if jax.process_index() == 0:
    plots.plot_run(run.workdir, run.plot_spec())
  if not evaluate or last < run.total_steps:
    return {}
  if jax.process_count() > 1:
    print("evaluation runs in one process: run `glofnd-jax eval --workdir "
          f"{run.workdir}` on one host.", flush=True)
    return {}
  results = run.evaluate(state)
  log_results(run.workdir, last, results)
  print_locations(run.workdir)
  return results


def print_locations(workdir: pathlib.Path) -> None:
  """Under the results table: where the results, plots and TensorBoard logs are (process 0)."""
  if jax.process_index() != 0:
    return
  pngs = sorted(p.name for p in workdir.glob("*.png"))
  print(f"results: {workdir / 'results.json'}\nplots:   {workdir}/{{{','.join(pngs)}}}\n"
        f"logs:    {workdir / 'metrics.jsonl'}; tensorboard --logdir {workdir / 'tensorboard'}",
        flush=True)


def evaluate_workdir(workdir) -> dict:
  """``glofnd-jax eval``: rebuild the run from its saved config, restore, and evaluate."""
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  with errors.setup_phase():
    run = task_lib.build_run(load_config(workdir), workdir)
    for line in run.preflight(evaluate=True):
      print(line)
    checkpointer = run.checkpointer()
    try:
      state, step = checkpointer.restore(run.init_state())
    finally:
      checkpointer.close()
  print(f"evaluating step {step} of {workdir}")
  results = run.evaluate(state)
  log_results(workdir, step, results)
  print_locations(workdir)
  return results
