"""The training config schema (ml_collections) and its translation into library objects.

Every config file in ``configs/`` starts from :func:`base_config` and overrides what its recipe
needs; every key is listed here with its meaning. Command-line overrides use the same names
(``--config.glofnd.mode=fnd``). Validation happens in the builders below, with messages naming
the config field.
"""

from __future__ import annotations

import difflib
import pathlib

import ml_collections

from glofnd_jax import augment as augment_lib
from glofnd_jax import detection, objectives, thresholds


def glofnd_section(**overrides) -> ml_collections.ConfigDict:
  """The ``glofnd`` config section (shared by every task), with recipe-specific defaults."""
  g = ml_collections.ConfigDict()
  g.mode = "glofnd"            # none | fnd | glofnd | glofnd_shared | oracle (needs labels)
  g.alpha = 0.01
  g.alphas = ()                # several alphas at once (losses averaged); () = just alpha
  g.lr = 0.05                  # the thresholds' Adam
  g.b1 = 0.9
  g.b2 = 0.98
  g.eps = 1e-8
  g.lam_init = 1.0
  g.start_update_epoch = 10    # threshold updates from this epoch
  g.start_mask_epoch = 10      # false negatives removed from the loss from this epoch
  g.init_quantile = False      # at start_update_epoch set lambda to the mini-batch quantile
  g.clip_grad_mult = 0.0
  g.normalize_by_alpha = False
  g.per_sample_steps = False
  g.quantile_metric = False    # log batch_quantile_mean in every mode (a top_k per step)
  for key, value in overrides.items():
    if key not in g:
      raise KeyError(f"glofnd_section: unknown field glofnd.{key}")
    g[key] = value
  return g


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "unimodal"           # unimodal (SogCLR/SimCLR on images)
  c.seed = 0
  c.batch_size = 128           # global batch, over all devices and processes
  c.epochs = 100
  c.log_every_steps = 20
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.nonfinite = "stop"         # stop (keep the last good checkpoint) | skip (skip the batch) | off
  c.lambda_snapshot_every_epochs = 10

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"       # digits | glyphs | synthetic | arrayrecord | imagenet100 | tfds:*
  c.data.data_dir = ""         # our ArrayRecord dir or the TFDS data_dir ("" = default)
  c.data.train_split = "train"
  c.data.val_split = "val"     # "" = hold out eval.val_fraction of train for probe selection
  c.data.test_split = "test"
  c.data.image_size = 8        # images are resized to this in the input pipeline
  c.data.channels = 1
  c.data.read_threads = 1
  c.data.synthetic_num_samples = 256  # only for name="synthetic" (test stand-in data)

  c.augment = ml_collections.ConfigDict()
  c.augment.kind = "digits"    # digits | simclr (fields below override the recipe's defaults)
  c.augment.crop_size = 0      # simclr: output size (0 = input size)
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.flip_prob = 0.5
  c.augment.jitter_prob = 0.8
  c.augment.jitter_strength = 1.0  # scales brightness/contrast/saturation 0.4 and hue 0.1
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = 0.5
  c.augment.mean = (0.485, 0.456, 0.406)
  c.augment.std = (0.229, 0.224, 0.225)

  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"   # small_cnn | resnet18 | resnet50
  c.model.stem = "cifar"       # resnets: cifar | imagenet
  c.model.num_filters = 64     # resnets: width of the first stage (smaller for tests)
  c.model.proj_dim = 128
  c.model.proj_hidden_dim = 0  # 0 = the backbone's feature width
  c.model.proj_layers = 2
  c.model.dtype = "float32"    # or bfloat16 (loss-side numerics stay float32)

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "sogclr"       # sogclr | simclr
  c.loss.temperature = 0.1
  c.loss.gamma = 0.9

  c.glofnd = glofnd_section()

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"        # lars | adamw | sgd
  c.optim.lr = 0.075
  c.optim.lr_scaling = "sqrt"  # none | linear (lr*B/256) | sqrt (lr*sqrt(B))
  c.optim.warmup_epochs = 10
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9

  c.eval = ml_collections.ConfigDict()
  c.eval.knn_k = 200
  c.eval.knn_temperature = 0.1
  c.eval.probe_fractions = (1.0, 0.1, 0.01)
  c.eval.val_fraction = 0.1
  c.eval.quantile = True       # exact dataset-wide quantile and lambda error (datasets that fit)
  c.eval.max_quantile_samples = 50_000
  c.eval.batch_size = 256
  # Transfer: logistic regression on other datasets' frozen features, as "name:train:test"
  # (read like data.name, from data.data_dir, with the same image size), e.g.
  # ("tfds:cifar100:train:test",). Model selection on a held-out part of their train split.
  c.eval.transfer = ()
  return c


NONFINITE_POLICIES = ("stop", "skip", "off")


def _require(condition: bool, field: str, value, fix: str) -> None:
  if not condition:
    raise ValueError(f"config.{field}={value!r} is invalid: {fix}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that are not tied to one builder (the builders check their own fields)."""
  _require(config.batch_size > 0, "batch_size", config.batch_size, "use a positive global batch.")
  _require(config.epochs > 0, "epochs", config.epochs, "train for at least one epoch.")
  _require(config.log_every_steps > 0, "log_every_steps", config.log_every_steps, "use >= 1.")
  _require(config.checkpoint_every_steps > 0, "checkpoint_every_steps",
           config.checkpoint_every_steps, "use >= 1.")
  _require(config.glofnd.mode in detection.MODES, "glofnd.mode", config.glofnd.mode,
           f"choose one of {', '.join(detection.MODES)}.")
  _require(config.loss.temperature > 0, "loss.temperature", config.loss.temperature,
           "the temperature must be positive (e.g. 0.1).")
  _require(config.optim.lr > 0, "optim.lr", config.optim.lr,
           "the learning rate must be positive (e.g. 0.075).")
  _require(config.glofnd.lr > 0, "glofnd.lr", config.glofnd.lr,
           "the threshold learning rate must be positive (the paper uses 0.05).")
  nonfinite = config.get("nonfinite", "stop")
  _require(nonfinite in NONFINITE_POLICIES, "nonfinite", nonfinite,
           f"choose one of {', '.join(NONFINITE_POLICIES)}.")
  _require(config.glofnd.start_update_epoch <= config.glofnd.start_mask_epoch,
           "glofnd.start_update_epoch", config.glofnd.start_update_epoch,
           f"it is after glofnd.start_mask_epoch={config.glofnd.start_mask_epoch}; the mask would "
           "use thresholds never learned. Set start_mask_epoch >= start_update_epoch.")
  _require(0 < config.glofnd.alpha < 1, "glofnd.alpha", config.glofnd.alpha,
           "alpha is the fraction of negatives treated as false negatives; it must lie in "
           "(0, 1), e.g. 0.01.")
  for alpha in config.glofnd.alphas:
    _require(0 < alpha < 1, "glofnd.alphas", tuple(config.glofnd.alphas),
             f"every alpha must lie in (0, 1), and {alpha!r} does not; e.g. (0.01, 0.02).")
  _validate_data(config.data)


def _validate_data(d: ml_collections.ConfigDict) -> None:
  """Dataset fields whose mistakes would otherwise surface deep inside a reader.

  Reads optional fields with ``get``: every task's config shares ``data.name`` and
  ``data.data_dir`` but not necessarily the image fields.
  """
  name, data_dir = d.get("name", ""), d.get("data_dir", "")
  _require(bool(name), "data.name", name, "name a dataset, e.g. 'digits' or 'tfds:cifar10'.")
  if "image_size" in d:
    _require(d.image_size > 0, "data.image_size", d.image_size, "use a positive image size.")
  if "channels" in d:
    _require(d.channels in (1, 3), "data.channels", d.channels, "use 1 (grey) or 3 (RGB).")
  if name == "synthetic":
    count = d.get("synthetic_num_samples", 1)
    _require(count > 0, "data.synthetic_num_samples", count,
             "the synthetic dataset needs at least one sample.")
  if name == "arrayrecord":
    _require(bool(data_dir), "data.data_dir", data_dir,
             "dataset 'arrayrecord' reads a directory written by `glofnd-jax convert-folder`; "
             "set --config.data.data_dir=DIR.")
  if data_dir and "://" not in data_dir and name not in ("digits", "glyphs"):
    _require(pathlib.Path(data_dir).expanduser().is_dir(), "data.data_dir", data_dir,
             f"the directory does not exist; point it at the prepared data of {name!r}.")


def check_known_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                     prefix: str = "") -> None:
  """Raise a clear error for a key of ``config`` that ``schema`` lacks (a misspelt key).

  Config files build on :func:`base_config`, and ``ConfigDict`` accepts any new attribute, so
  ``c.glofnd.alpah = 0.1`` in a config file would otherwise be silently ignored.
  """
  for key in config.keys():
    field = f"{prefix}{key}"
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f"did you mean config.{prefix}{close[0]}?" if close else (
          f"known keys here: {', '.join(sorted(schema.keys()))}.")
      raise ValueError(f"config.{field} is not a known config key (value {config[key]!r}): "
                       f"{hint} Every key is listed in glofnd_jax/config_lib.py:base_config().")
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(
        schema[key], ml_collections.ConfigDict):
      check_known_keys(config[key], schema[key], f"{field}.")


def threshold_config(config) -> thresholds.ThresholdConfig:
  g = config.glofnd
  return thresholds.ThresholdConfig(
      alpha=g.alpha, lr=g.lr, b1=g.b1, b2=g.b2, eps=g.eps, lam_init=g.lam_init,
      clip_grad_mult=g.clip_grad_mult or None, normalize_by_alpha=g.normalize_by_alpha,
      per_sample_steps=g.per_sample_steps, init_quantile=g.init_quantile,
      start_update=g.start_update_epoch, start_mask=g.start_mask_epoch)


def unimodal_objective_config(config) -> objectives.UnimodalConfig:
  validate(config)
  return objectives.UnimodalConfig(
      loss=config.loss.name, mode=config.glofnd.mode, thresholds=threshold_config(config),
      alphas=tuple(float(a) for a in config.glofnd.alphas),
      temperature=config.loss.temperature, gamma=config.loss.gamma,
      quantile_metric=bool(config.glofnd.quantile_metric))


def augment_config(config):
  a = config.augment
  if a.kind == "digits":
    return augment_lib.DigitsAugmentConfig()
  if a.kind == "simclr":
    s = a.jitter_strength
    return augment_lib.SimCLRAugmentConfig(
        crop_size=a.crop_size or None, crop_scale=tuple(a.crop_scale), flip_prob=a.flip_prob,
        jitter_prob=a.jitter_prob, brightness=0.4 * s, contrast=0.4 * s, saturation=0.4 * s,
        hue=0.1 * s, grayscale_prob=a.grayscale_prob, blur_prob=a.blur_prob,
        mean=tuple(a.mean), std=tuple(a.std))
  raise ValueError(f"config.augment.kind={a.kind!r} is unknown: use 'digits' or 'simclr'.")


def model_kwargs(config) -> dict:
  m = config.model
  kwargs = dict(proj_dim=m.proj_dim, proj_hidden_dim=m.proj_hidden_dim or None,
                proj_layers=m.proj_layers, dtype=m.dtype)
  if m.name.startswith("resnet"):
    kwargs.update(stem=m.stem, num_filters=m.num_filters)
  return kwargs

