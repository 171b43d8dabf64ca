"""What every task gives the train loop, and what all tasks share.

A task (``config.task``) turns a config into data, a model, an optimiser, a jitted step and a
train state. The loop (:mod:`glofnd_jax.training.loop`) uses only the :class:`Task` interface:

  attributes  ``config``, ``workdir``, ``mesh``, ``batch``, ``num_samples``, ``steps_per_epoch``,
              ``total_steps``, ``schedule``, ``detector_sides``
  methods     ``init_state()``, ``iterator()``, ``step_fn()``, ``checkpointer()``,
              ``global_batch(local)``, ``thresholds_for_snapshot(state)``, ``evaluate(state)``

A subclass builds its own data, ``model``, ``tx``, ``objective``, ``augment`` and
``sample_input`` in ``__init__`` (after ``super().__init__``) and implements ``iterator``,
``step_fn``, ``global_batch`` and ``evaluate``; the rest is here.
"""

from __future__ import annotations

import importlib
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import sharding
from glofnd_jax.data import pipeline
from glofnd_jax.training import checkpoint as checkpoint_lib
from glofnd_jax.training import plots
from glofnd_jax.training import preflight as preflight_lib
from glofnd_jax.training import step as step_lib

# config.task -> "module:class" of the task (imported on use: a unimodal run never imports the
# image-text stack).
TASKS = {"unimodal": "glofnd_jax.training.unimodal:UnimodalRun",
         "clip": "glofnd_jax.training.image_text:ClipRun"}


def build_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> "Task":
  """The task object of ``config.task`` (default ``unimodal``)."""
  task = config.get("task", "unimodal")
  if task not in TASKS:
    raise ValueError(f"config.task={task!r} is unknown; choose one of {', '.join(TASKS)}.")
  module_name, class_name = TASKS[task].split(":")
  return getattr(importlib.import_module(module_name), class_name)(config, workdir)


class Task:
  """The shared part of every task: mesh, global batch, epochs, state, checkpoints, snapshots."""

  # The detectors whose metrics are logged as ``detector/<side>/...`` (plots and reports read
  # them by this prefix): image anchors only, unless a task has more.
  detector_sides: tuple[str, ...] = ("img",)

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    self.config, self.workdir = config, pathlib.Path(workdir)
    self.mesh = sharding.make_mesh()
    self.batch = config.batch_size
    sharding.check_global_batch(self.batch, self.mesh, field="config.batch_size")

  def set_epochs(self, num_records: int, what: str) -> None:
    """``steps_per_epoch`` and ``total_steps`` from the records one epoch reads (``what``
    names them in the error, e.g. ``"dataset (N samples)"``)."""
    self.steps_per_epoch = pipeline.steps_per_epoch(num_records, self.batch)
    if self.steps_per_epoch == 0:
      raise ValueError(f"config.batch_size={self.batch} is larger than the "
                       f"{what.format(n=num_records)}: lower it.")
    self.total_steps = self.config.epochs * self.steps_per_epoch

  def augmented_image_sample(self) -> np.ndarray:
    """A ``(1, ...)`` float32 array shaped like one augmented view (model init needs shapes)."""
    d = self.config.data
    raw = jax.ShapeDtypeStruct((1, d.image_size, d.image_size, d.channels), jnp.uint8)
    view = jax.eval_shape(lambda x: augment_lib.augment(jax.random.key(0), x, self.augment), raw)
    return np.zeros(view.shape, np.float32)

  def init_state(self) -> step_lib.TrainState:
    return step_lib.create_train_state(
        self.model, self.tx, self.sample_input, self.objective, self.num_samples, self.mesh,
        jax.random.key(self.config.seed))

  def on_restore(self, state, step: int):
    """Hook applied after a training resume (see :class:`~glofnd_jax.training.checkpoint.
    Checkpointer`); the default keeps the restored state."""
    del step
    return state

  def checkpointer(self) -> checkpoint_lib.Checkpointer:
    # Every task's iterator slices global batches per process, so its saved position is the
    # step, the same for any process count.
    return checkpoint_lib.Checkpointer(
        self.workdir / "checkpoints", max_to_keep=self.config.keep_checkpoints,
        fingerprint=checkpoint_lib.config_fingerprint(self.config, self.num_samples),
        position_is_global=True, on_restore=self.on_restore, workdir_messages=True,
        may_change=("seed",) if self.config.get("allow_seed_change", False) else ())

  def preflight(self, evaluate: bool = True) -> list[str]:
    """Checks before the first step (:mod:`glofnd_jax.training.preflight`): raises for what
    would fail later, returns the lines to print (warnings, announced conversions). Tasks add
    their data and evaluation checks; ``evaluate=False`` skips those of the evaluation."""
    del evaluate
    return preflight_lib.check_schedule(self.config.glofnd, self.config.epochs)

  def describe_data(self) -> str:
    """The header's data phrase: images, augmentation (tasks without images override it)."""
    d, a = self.config.data, self.config.augment
    return (f"{d.image_size}x{d.image_size}x{d.channels} images, augmentation {a.kind}")

  def learned_thresholds(self, state):
    """The per-sample threshold states (one per alpha), ``None`` for modes without them."""
    return state.per_sample.thresholds

  def thresholds_for_snapshot(self, state) -> dict:
    """``{side: lambda array}`` of the first alpha to snapshot (``{}`` for modes without)."""
    thresholds = self.learned_thresholds(state)
    return {} if thresholds is None else {"img": thresholds[0].lam}

  def plot_spec(self) -> plots.PlotSpec:
    """What the plots need besides the run's files: epochs, detector sides, the schedule."""
    g = self.config.glofnd
    learned = g.mode in ("glofnd", "glofnd_shared")
    return plots.PlotSpec(self.steps_per_epoch, self.detector_sides,
                          start_update=g.start_update_epoch if learned else None,
                          start_mask=None if g.mode == "none" else g.start_mask_epoch)
