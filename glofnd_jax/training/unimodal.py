"""The unimodal task (SogCLR/SimCLR + GloFND on images): what a run builds from its config."""

from __future__ import annotations

import functools
import pathlib

import ml_collections

from glofnd_jax import augment as augment_lib
from glofnd_jax import data, distributed, errors, models, per_sample
from glofnd_jax.config import common as config_common
from glofnd_jax.config import unimodal as unimodal_config
from glofnd_jax.data import bad_records
from glofnd_jax.data.pipeline import decode_stage
from glofnd_jax.evaluation import unimodal as unimodal_eval
from glofnd_jax.training import optim
from glofnd_jax.training import preflight as preflight_lib
from glofnd_jax.training import step as train_step_lib
from glofnd_jax.training import task as task_lib


class UnimodalRun(task_lib.Task):
  """Everything a unimodal run builds from its config: data, model, optimiser, step, state."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    config_common.validate(config)
    config_common.check_known_keys(config, unimodal_config.base_config())
    super().__init__(config, workdir)
    self.source = self.open_split(config.data.train_split)
    self.num_samples = len(self.source)
    if self.num_samples == 0:
      raise ValueError(
          f"config.data.train_split={config.data.train_split!r} of config.data.name="
          f"{config.data.name!r} is empty (0 records, config.data.data_dir="
          f"{config.data.data_dir!r}): point data_dir at the prepared dataset or name a "
          "non-empty split.")
    self.set_epochs(self.num_samples, "dataset ({n} samples)")
    self.model = models.get_model(config.model.name, **unimodal_config.model_kwargs(config))
    peak = optim.scaled_lr(config.optim.lr, self.batch, config.optim.lr_scaling)
    self.schedule = optim.make_schedule(peak, config.optim.warmup_epochs * self.steps_per_epoch,
                                        self.total_steps)
    self.tx = optim.make_optimizer(config.optim.name, self.schedule,
                                   weight_decay=config.optim.weight_decay,
                                   momentum=config.optim.momentum)
    self.objective = unimodal_config.unimodal_objective_config(config)
    self.augment = unimodal_config.augment_config(config)
    self.host_crop = unimodal_config.host_crop_config(config)
    self.sample_input = self.augmented_image_sample()
    # Training's records replaced by stand-ins (data.on_bad_sample='skip'), logged once each.
    self.bad_records = bad_records.BadRecordLog(self.source, config.data.train_split,
                                                self._decode_stage().decode)

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

  def preflight(self, evaluate: bool = True) -> list[str]:
    """The schedule, the train images against the config, and (``evaluate``) every split and
    label the evaluation reads: what would fail after training fails now."""
    notes = super().preflight(evaluate)
    d = self.config.data
    note = preflight_lib.image_note(self.source, d.image_size, d.channels, d.train_split,
                                    skip_bad=d.get("on_bad_sample", "fail") == "skip")
    notes += [note] if note else []
    if not evaluate:
      return notes
    evaluated = {"data.test_split": d.test_split, "data.val_split": d.val_split}
    counts = {}
    for field, split in evaluated.items():
      if split:
        why = "the kNN and linear-probe test" if "test" in field else "the probes' C selection"
        source = preflight_lib.open_nonempty(self.open_split, field, split, why)
        counts[field] = preflight_lib.label_counts(source, split)
    if not d.test_split:
      raise errors.ConfigError(
          "config.data.test_split is '' but the evaluation reports test accuracy: name the test "
          "split, or pass --no-evaluate to train without the evaluation.")
    preflight_lib.check_labels(preflight_lib.label_counts(self.source, d.train_split), counts,
                               list(getattr(self.source, "class_names", []) or []),
                               hold_out_val=not d.val_split)
    return notes

  def _decode_stage(self):
    d = self.config.data
    return decode_stage(image_size=d.image_size, channels=d.channels, host_crop=self.host_crop,
                        seed=self.config.seed, on_bad_sample=d.get("on_bad_sample", "fail"))

  def iterator(self):
    c = self.config
    d = c.data
    return data.make_iterator(self.source, global_batch_size=self.batch, seed=c.seed,
                              image_size=d.image_size, channels=d.channels,
                              host_crop=self.host_crop,
                              on_bad_sample=d.get("on_bad_sample", "fail"),
                              worker_count=d.worker_count, read_threads=d.read_threads,
                              prefetch_batches=d.prefetch_batches)

  def step_fn(self):
    two_views = functools.partial(augment_lib.two_views, config=self.augment)
    return train_step_lib.make_unimodal_train_step(
        self.model, self.tx, self.objective, num_samples=self.num_samples,
        global_batch=self.batch, mesh=self.mesh, augment=two_views,
        samples_per_epoch=self.steps_per_epoch * self.batch,
        nonfinite=self.config.get("nonfinite", "stop"))

  def global_batch(self, local: dict) -> dict:
    """This process's loader batch -> the global batch the step takes (indices checked)."""
    per_sample.check_indices(local["index"], self.num_samples, "batch index")
    self.bad_records.note(local)
    d = self.config.data
    expected = (d.image_size, d.image_size, d.channels)
    if self.host_crop is not None:
      expected = (self.host_crop.views, *self.host_crop.size, d.channels)
    if tuple(local["image"].shape[1:]) != expected:
      raise ValueError(
          f"batch images have shape {tuple(local['image'].shape[1:])} but the model was built "
          f"for {expected} (config.data.image_size={self.config.data.image_size}, "
          f"config.data.channels={self.config.data.channels}): set those fields to the images' "
          "size or resize the images in the input pipeline.")
    return distributed.global_batch_from_local(
        {"image": local["image"], "index": local["index"], "label": local["label"]}, self.mesh)

  def evaluate(self, state) -> dict:
    return unimodal_eval.evaluate_run(self, state)
