"""The unimodal task (SogCLR/SimCLR + GloFND on images): what a run builds from its config."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import checkpoint as checkpoint_lib
from glofnd_jax import config_lib, data, distributed, evaluation, models, optim, per_sample
from glofnd_jax import mesh as mesh_lib
from glofnd_jax import train_step as train_step_lib


class UnimodalRun:
  """Everything a unimodal run builds from its config: data, model, optimiser, step, state.

  The train loop (:mod:`glofnd_jax.train`) only uses the interface below, which every task's
  run class provides: ``config``, ``workdir``, ``mesh``, ``batch``, ``num_samples``,
  ``steps_per_epoch``, ``total_steps``, ``schedule``, ``init_state()``, ``iterator()``,
  ``step_fn()``, ``checkpointer()``, ``global_batch(local)``, ``thresholds_for_snapshot(state)``
  and ``evaluate(state)``.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    config_lib.validate(config)
    config_lib.check_known_keys(config, config_lib.base_config())
    self.config, self.workdir = config, workdir
    self.mesh = mesh_lib.make_mesh()
    self.batch = config.batch_size
    mesh_lib.check_global_batch(self.batch, self.mesh, field="config.batch_size")
    self.source = self.open_split(config.data.train_split)
    self.num_samples = len(self.source)
    if self.num_samples == 0:
      raise ValueError(
          f"config.data.train_split={config.data.train_split!r} of config.data.name="
          f"{config.data.name!r} is empty (0 records, config.data.data_dir="
          f"{config.data.data_dir!r}): point data_dir at the prepared dataset or name a "
          "non-empty split.")
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
    if d.name == "glyphs":
      kwargs = dict(image_size=d.image_size)  # rendered at the training size, not resized
    try:
      return data.get_source(d.name, split, data_dir=d.data_dir or None, workdir=self.workdir,
                             **kwargs)
    except (FileNotFoundError, ValueError) as error:
      # The reader's message says what is missing and how to make it; add the config fields.
      kind = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
      raise kind(f"cannot open split {split!r} of config.data.name={d.name!r} "
                 f"(config.data.data_dir={d.data_dir!r}): {error}") from error

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
        samples_per_epoch=self.steps_per_epoch * self.batch,
        nonfinite=self.config.get("nonfinite", "stop"))

  def checkpointer(self):
    return checkpoint_lib.Checkpointer(
        self.workdir / "checkpoints", max_to_keep=self.config.keep_checkpoints,
        fingerprint=checkpoint_lib.config_fingerprint(self.config, self.num_samples),
        position_is_global=True)  # data.make_iterator: the position is the step, any process

  def global_batch(self, local: dict) -> dict:
    """This process's loader batch -> the global batch the step takes (indices checked)."""
    per_sample.check_indices(local["index"], self.num_samples, "batch index")
    expected = (self.config.data.image_size, self.config.data.image_size,
                self.config.data.channels)
    if tuple(local["image"].shape[1:]) != expected:
      raise ValueError(
          f"batch images have shape {tuple(local['image'].shape[1:])} but the model was built "
          f"for {expected} (config.data.image_size={self.config.data.image_size}, "
          f"config.data.channels={self.config.data.channels}): set those fields to the images' "
          "size or resize the images in the input pipeline.")
    return distributed.global_batch_from_local(
        {"image": local["image"], "index": local["index"], "label": local["label"]}, self.mesh)

  def thresholds_for_snapshot(self, state):
    """The learned lambda array to snapshot (``None`` for modes without one)."""
    thresholds = state.per_sample.thresholds
    return None if thresholds is None else thresholds[0].lam

  def evaluate(self, state) -> dict:
    return evaluation.evaluate_run(self, state)
