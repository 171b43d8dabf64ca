"""The unimodal training loop: data -> jitted step -> logs, checkpoints, plots -> evaluation.

:func:`train_and_evaluate` is what ``glofnd-jax train`` runs. Everything per step happens in the
pure jitted step of :mod:`glofnd_jax.train_step`; this loop feeds batches, logs every
``log_every_steps`` (``metrics.jsonl``, TensorBoard, a tqdm bar with images/s), snapshots the
lambda distribution, saves orbax checkpoints (train state + data-iterator position) and resumes
from the latest complete one, then draws the plots and evaluates (:mod:`glofnd_jax.evaluation`).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from glofnd_jax import augment as augment_lib
from glofnd_jax import checkpoint as checkpoint_lib
from glofnd_jax import config_lib, data, distributed, evaluation, models, optim, per_sample, plots
from glofnd_jax import mesh as mesh_lib
from glofnd_jax import train_step as train_step_lib
from glofnd_jax.metrics_writer import MetricWriter

CONFIG_FILE = "config.json"


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


class Run:
  """Everything a run builds from its config: data source, model, optimiser, step, state."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    config_lib.validate(config)
    self.config, self.workdir = config, workdir
    self.mesh = mesh_lib.make_mesh()
    self.batch = config.batch_size
    mesh_lib.check_global_batch(self.batch, self.mesh)
    self.source = self.open_split(config.data.train_split)
    self.num_samples = len(self.source)
    if self.num_samples == 0:
      raise ValueError(f"dataset {config.data.name!r} split {config.data.train_split!r} is empty.")
    self.steps_per_epoch = data.steps_per_epoch(self.num_samples, self.batch)
    if self.steps_per_epoch == 0:
      raise ValueError(f"config.batch_size={self.batch} is larger than the dataset "
                       f"({self.num_samples} samples): lower it.")
    self.total_steps = config.epochs * self.steps_per_epoch
    self.model = models.get_model(config.model.name, **config_lib.model_kwargs(config))
    peak = optim.scaled_lr(config.optim.lr, self.batch, config.optim.lr_scaling)
    self.schedule = optim.make_schedule(peak, config.optim.warmup_epochs * self.steps_per_epoch,
                                        self.total_steps)
    self.tx = optim.make_optimizer(config.optim.name, self.schedule,
                                   weight_decay=config.optim.weight_decay,
                                   momentum=config.optim.momentum)
    self.objective = config_lib.unimodal_objective_config(config)
    self.augment = config_lib.augment_config(config)
    size, channels = config.data.image_size, config.data.channels
    raw = jax.ShapeDtypeStruct((1, size, size, channels), jnp.uint8)
    view = jax.eval_shape(lambda x: augment_lib.augment(jax.random.key(0), x, self.augment), raw)
    self.sample_input = np.zeros(view.shape, np.float32)

  def open_split(self, split: str):
    """A random-access source of ``split`` of the configured dataset."""
    d = self.config.data
    kwargs = {}
    if d.name == "synthetic":
      kwargs = dict(num_samples=d.synthetic_num_samples,
                    image_shape=(d.image_size, d.image_size, d.channels))
    return data.get_source(d.name, split, data_dir=d.data_dir or None, workdir=self.workdir,
                           **kwargs)

  def init_state(self):
    return train_step_lib.create_train_state(
        self.model, self.tx, self.sample_input, self.objective, self.num_samples, self.mesh,
        jax.random.key(self.config.seed))

  def iterator(self):
    c = self.config
    return data.make_iterator(self.source, global_batch_size=self.batch, seed=c.seed,
                              image_size=c.data.image_size, channels=c.data.channels,
                              read_threads=c.data.read_threads)

  def step_fn(self):
    two_views = functools.partial(augment_lib.two_views, config=self.augment)
    return train_step_lib.make_unimodal_train_step(
        self.model, self.tx, self.objective, num_samples=self.num_samples,
        global_batch=self.batch, mesh=self.mesh, augment=two_views,
        samples_per_epoch=self.steps_per_epoch * self.batch)

  def checkpointer(self):
    return checkpoint_lib.Checkpointer(self.workdir / "checkpoints",
                                       max_to_keep=self.config.keep_checkpoints)


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
  run = Run(config, workdir)
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
  learned = config.glofnd.mode in ("glofnd", "glofnd_shared")
  c = config
  print(f"training {c.model.name} with {c.loss.name} + {c.glofnd.mode} on {c.data.name}: "
        f"{run.num_samples} samples, batch {run.batch}, {c.epochs} epochs "
        f"({run.total_steps} steps) on {run.mesh.devices.size} device(s)")
  tick, tick_step = time.perf_counter(), first_step
  bar = tqdm(total=last, initial=first_step, unit="step", disable=jax.process_index() != 0,
             dynamic_ncols=True, mininterval=2.0)
  try:
    for step in range(first_step, last):
      local = next(iterator)
      per_sample.check_indices(local["index"], run.num_samples, "batch index")
      batch = distributed.global_batch_from_local(
          {"image": local["image"], "index": local["index"], "label": local["label"]}, run.mesh)
      state, metrics = step_fn(state, batch)
      done = step + 1
      if done % c.log_every_steps == 0 or done == last:
        now = time.perf_counter()
        images_per_sec = (done - tick_step) * run.batch / max(now - tick, 1e-9)
        tick, tick_step = now, done
        values = writer.write(done, {**metrics, "lr": run.schedule(step),
                                     "images_per_sec": images_per_sec})
        _check_finite(values, done)
        bar.set_postfix(loss=f"{values['loss']:.4f}", kept=f"{values['kept_fraction']:.3f}",
                        img_s=f"{images_per_sec:.0f}")
      if learned and done % run.steps_per_epoch == 0:
        epoch = done // run.steps_per_epoch
        if epoch % c.lambda_snapshot_every_epochs == 0 or done == run.total_steps:
          lam = host_array(state.per_sample.thresholds[0].lam)[:run.num_samples]
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
  return evaluation.evaluate_run(run, state)


def evaluate_workdir(workdir) -> dict:
  """``glofnd-jax eval``: rebuild the run from its saved config, restore, and evaluate."""
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  run = Run(load_config(workdir), workdir)
  checkpointer = run.checkpointer()
  try:
    state, step = checkpointer.restore(run.init_state())
  finally:
    checkpointer.close()
  print(f"evaluating step {step} of {workdir}")
  return evaluation.evaluate_run(run, state)
