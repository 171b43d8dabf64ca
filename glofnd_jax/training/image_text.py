"""The image-text task (FastCLIP v1/v3 + GloFND, ``config.task = "clip"``): what a run builds.

:class:`ClipRun` is a :class:`glofnd_jax.training.task.Task`, the interface that
all the train loop (:mod:`glofnd_jax.training.loop`) uses. Data sizes follow the index contract
(:mod:`glofnd_jax.data.pairs.contract`): ``num_samples`` is ``data_size = max key + 1`` (the length
of every per-sample array: image and text lambda, their moments, ``u``), while an epoch is
``num_records // batch`` steps over the samples actually present.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import ml_collections
import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import distributed, errors, per_sample, sharding
from glofnd_jax.config import image_text as image_text_config
from glofnd_jax.config import unimodal as unimodal_config
from glofnd_jax.data.pairs.pipeline import make_pair_iterator
from glofnd_jax.data.pairs.registry import open_pair_source
from glofnd_jax.data.pairs.screening import screen_samples
from glofnd_jax.data import tokenizer as tokenizer_lib
from glofnd_jax.evaluation import image_text as image_text_eval
from glofnd_jax.training import optim
from glofnd_jax.training import step as train_step_lib
from glofnd_jax.training import task as task_lib

class ClipRun(task_lib.Task):
  """Everything an image-text run builds from its config: data, tokenizer, model, step, state.

  Attributes (beyond the :class:`~glofnd_jax.training.task.Task` interface): ``tokenizer``,
  ``source`` (the screened training pairs), ``num_records`` (pairs present), ``screen_report``
  (bad-sample counts).
  """

  detector_sides = ("img", "txt")  # a threshold per image and per text anchor

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    image_text_config.validate(config)
    super().__init__(config, workdir)
    self.source, self.screen_report = self.open_split("train")
    self.num_records = len(self.source)
    self.num_samples = self.source.data_size
    self.set_epochs(self.num_records, "training set ({n} pairs)")
    names = config.eval.zeroshot_class_names
    if names and self.source.has_labels and self.source.labels.max() >= len(names):
      raise ValueError(
          f"config.eval.zeroshot_class_names has {len(names)} names but the training labels go "
          f"up to {int(self.source.labels.max())}: give one name per class, in label order.")
    self.tokenizer = self._tokenizer()
    self.model = image_text_config.build_model(config, self.tokenizer.vocab_size)
    o = config.optim
    self.schedule = optim.warmup_cosine(o.lr, o.warmup_steps, self.total_steps)
    self.tx = optim.make_clip_optimizer(
        self.schedule, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
        learn_temperature=image_text_config.loss_name(config) != "fastclip_v1", lr_tau=o.lr_tau,
        temperature_schedule=o.temperature_schedule, warmup_steps=o.warmup_steps,
        total_steps=self.total_steps)
    self.objective = image_text_config.bimodal_objective_config(config)
    self.augment = unimodal_config.augment_config(config)
    self.sample_input = (self.augmented_image_sample(),
                         np.zeros((1, config.tokenizer.context_length), np.int32))

  # ------------------------------------------------------------------------- data

  @property
  def index_dir(self) -> pathlib.Path:
    return pathlib.Path(self.config.data.index_dir or self.workdir / "data" / "index")

  def open_split(self, role: str):
    """The screened source of the ``role`` split (``train``/``val``/``test``) and its report.

    Returns ``(None, None)`` when the config names no such split.
    """
    d = self.config.data
    split = d[f"{role}_split"]
    if not split:
      return None, None
    if d.name == "webdataset" and role != "train" and not d.get(f"{role}_shards", ""):
      if jax.process_index() == 0:
        print(f"no {role} pairs (config.data.{role}_shards is empty): the evaluation on them "
              "is skipped.")
      return None, None
    shards = d.get(f"{role}_shards", "")
    try:
      source = open_pair_source(
          d.name, split, shards=shards, data_dir=d.data_dir, workdir=self.workdir,
          key_field=d.key_field, caption_field=d.caption_field, label_field=d.label_field,
          index_dir=self.index_dir, workers=d.index_workers, seed=self.config.seed,
          on_damaged_shard=d.get("on_damaged_shard", "fail"))
    except (FileNotFoundError, ValueError) as error:
      # The reader names the shard and the fix; add the config fields that led to it.
      raise type(error)(f"cannot open the {role} pairs (config.data.name={d.name!r}, "
                        f"config.data.{role}_shards={shards!r}, config.data.data_dir="
                        f"{d.data_dir!r}): {error}") from error
    screened = screen_samples(source, on_bad_sample=d.on_bad_sample,
                              verify_images=d.verify_images, workers=d.index_workers,
                              cache_dir=self.index_dir)
    report = screened.report
    damaged = list(getattr(source, "damaged", []))
    report["damaged_shards"] = {"count": len(damaged), "shards": damaged}
    if damaged and jax.process_index() == 0:
      print(f"{role} split {split!r}: {len(damaged)} damaged shard(s), only their intact samples "
            f"are used (data.on_damaged_shard='skip'): {'; '.join(damaged)}")
    skipped = {k: report[k]["count"] for k in ("unusable", "empty_captions", "bad_images")
               if report[k]["count"]}
    if skipped and jax.process_index() == 0:
      examples = [e for k in skipped for e in report[k]["examples"][:2]]
      print(f"{role} split {split!r}: skipped bad samples {skipped} (of "
            f"{report['num_samples']}), e.g. {'; '.join(examples)}")
    return screened.source, report

  def preflight(self, evaluate: bool = True) -> list[str]:
    """The schedule, and (``evaluate``) the held-out pairs the retrieval evaluation reads: when
    the config names them they must open and hold pairs (kept for the evaluation)."""
    notes = super().preflight(evaluate)
    if evaluate:
      self._test_pairs = self.open_split("test")
      source = self._test_pairs[0]
      if source is not None and len(source) == 0:
        raise errors.DataError(
            f"config.data.test_split={self.config.data.test_split!r} holds no usable pairs: the "
            "retrieval evaluation reads it. Point config.data.test_shards at held-out pairs, set "
            "--config.data.test_split='' to skip it, or pass --no-evaluate.")
    return notes

  def open_test_pairs(self):
    """The test pairs of :meth:`open_split` (opened once: preflight keeps them)."""
    if getattr(self, "_test_pairs", None) is None:
      self._test_pairs = self.open_split("test")
    return self._test_pairs

  def _tokenizer(self) -> tokenizer_lib.ClipTokenizer:
    t = self.config.tokenizer
    path = pathlib.Path(t.path) if t.path else self.workdir / "tokenizer.json"
    if not t.path and not path.exists():
      # The default trains a tokenizer on the training captions on first use (every process
      # computes the same file; for large multi-host runs train one beforehand).
      captions = (self.source.read_caption(i) for i in range(len(self.source)))
      tokenizer_lib.train_tokenizer(captions, path, vocab_size=t.vocab_size,
                                    min_frequency=t.min_frequency)
      print(f"trained a tokenizer on {len(self.source)} training captions: {path}")
    return tokenizer_lib.ClipTokenizer(path, t.context_length, sot_token=t.sot_token,
                                       eot_token=t.eot_token)

  def iterator(self):
    c = self.config
    return make_pair_iterator(
        self.source, self.tokenizer, global_batch_size=self.batch, seed=c.seed,
        image_size=c.data.image_size, channels=c.data.channels, resize_mode=c.data.resize_mode,
        read_threads=c.data.read_threads)

  def global_batch(self, local: dict) -> dict:
    """This process's loader batch -> the global batch the step takes (keys checked)."""
    per_sample.check_indices(local["index_img"], self.num_samples, "batch key")
    batch = {name: local[name] for name in ("image", "text", "index_img", "index_txt")}
    if self.source.has_labels:  # labels only when known: -1 would read as one class
      batch["label"] = local["label"]
    return distributed.global_batch_from_local(batch, self.mesh)

  # ------------------------------------------------------------------------- model and state

  def step_fn(self):
    augment = functools.partial(augment_lib.augment, config=self.augment)
    return train_step_lib.make_bimodal_train_step(
        self.model, self.tx, self.objective, num_samples=self.num_samples,
        global_batch=self.batch, mesh=self.mesh, augment=augment,
        samples_per_epoch=self.steps_per_epoch * self.batch,
        nonfinite=self.config.get("nonfinite", "stop"))

  def reset_thresholds(self, state):
    """``state`` with fresh image and text thresholds (lambda = lam_init, moments 0)."""
    if state.per_sample.thresholds_img is None:
      return state
    fresh = sharding.init_per_sample_state_sharded(self.num_samples, self.objective, self.mesh)
    per = state.per_sample.replace(thresholds_img=fresh.thresholds_img,
                                   thresholds_txt=fresh.thresholds_txt)
    return state.replace(per_sample=per)

  def on_restore(self, state, step: int):
    """``glofnd.reset_lambda_on_resume``: fresh thresholds after a training resume (u kept)."""
    if not self.config.glofnd.reset_lambda_on_resume:
      return state
    if jax.process_index() == 0:
      print(f"glofnd.reset_lambda_on_resume: thresholds reset at step {step}")
    return self.reset_thresholds(state)

  def learned_thresholds(self, state):
    """The image-anchor thresholds (keys that are holes keep ``lam_init``)."""
    return state.per_sample.thresholds_img

  def thresholds_for_snapshot(self, state) -> dict:
    """``{"img": ..., "txt": ...}``: image- and text-anchor lambda of the first alpha."""
    if state.per_sample.thresholds_img is None:
      return {}
    return {"img": state.per_sample.thresholds_img[0].lam,
            "txt": state.per_sample.thresholds_txt[0].lam}

  def evaluate(self, state) -> dict:
    return image_text_eval.evaluate_clip_run(self, state)
