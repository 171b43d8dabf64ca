"""What every task's config shares: run settings, the ``glofnd`` section, field checks, the
known-key check.

Each task's schema (:mod:`glofnd_jax.config.unimodal`, :mod:`glofnd_jax.config.image_text`)
builds on these; validation messages name the config field and the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib

import ml_collections

from glofnd_jax import detection, errors, thresholds, treatments
from glofnd_jax.data import bad_records
from glofnd_jax.training import nonfinite as nonfinite_lib


def _override(section: ml_collections.ConfigDict, overrides: dict, what: str,
              prefix: str = "") -> None:
  for key, value in overrides.items():
    if key not in section:
      raise KeyError(f"{what}: unknown field {prefix}{key}")
    section[key] = value


def run_section(task: str, **overrides) -> ml_collections.ConfigDict:
  """A config's top-level run settings (shared by every task), with the task's defaults."""
  c = ml_collections.ConfigDict()
  c.task = task                # unimodal (SogCLR/SimCLR on images) | clip (image-text)
  c.seed = 0
  # Resume a checkpoint written with another seed (refused by default). From the resumed step
  # the data order and the evaluation's random splits follow the new seed; the parameters and the
  # PRNG key of augmentations come from the checkpoint: the run matches neither seed's run.
  c.allow_seed_change = False
  c.batch_size = 128           # global batch, over all devices and processes
  c.epochs = 100
  c.log_every_steps = 20
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.nonfinite = "stop"         # stop (keep the last good checkpoint) | skip (skip the batch) | off
  c.lambda_snapshot_every_epochs = 10  # (image-anchor) lambda histogram, PNG + TensorBoard
  _override(c, overrides, "run_section")
  return c


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
  g.treatment = "remove"       # remove | attract (flagged -> positives) | reweight (soft weights)
  g.tau_w = 0.05               # reweight: w_ij = sigmoid((lambda_i - s_ij) / tau_w)
  # A start epoch >= epochs is refused before training (GloFND would never act); True trains
  # so anyway, with a warning (e.g. a short smoke run of a long recipe).
  g.allow_late_start = False
  _override(g, overrides, "glofnd_section", prefix="glofnd.")
  return g


def _require(condition: bool, field: str, value, fix: str) -> None:
  if not condition:
    raise errors.ConfigError(f"config.{field}={value!r} is invalid: {fix}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that are not tied to one builder (the builders check their own fields)."""
  _require(config.batch_size > 0, "batch_size", config.batch_size, "use a positive global batch.")
  _require(config.epochs > 0, "epochs", config.epochs, "train for at least one epoch.")
  _require(config.log_every_steps > 0, "log_every_steps", config.log_every_steps, "use >= 1.")
  _require(config.checkpoint_every_steps > 0, "checkpoint_every_steps",
           config.checkpoint_every_steps, "use >= 1.")
  _require(config.keep_checkpoints >= 1, "keep_checkpoints", config.keep_checkpoints,
           "keep at least one checkpoint (use >= 1; 0 would delete every checkpoint of the run).")
  _require(config.glofnd.mode in detection.MODES, "glofnd.mode", config.glofnd.mode,
           f"choose one of {', '.join(detection.MODES)}.")
  _require(config.loss.temperature > 0, "loss.temperature", config.loss.temperature,
           "the temperature must be positive (e.g. 0.1).")
  _require(config.optim.lr > 0, "optim.lr", config.optim.lr,
           "the learning rate must be positive (e.g. 0.075).")
  _require(config.glofnd.lr > 0, "glofnd.lr", config.glofnd.lr,
           "the threshold learning rate must be positive (the paper uses 0.05).")
  nonfinite = config.get("nonfinite", "stop")
  _require(nonfinite in nonfinite_lib.POLICIES, "nonfinite", nonfinite,
           f"choose one of {', '.join(nonfinite_lib.POLICIES)}.")
  _require(config.glofnd.start_update_epoch <= config.glofnd.start_mask_epoch,
           "glofnd.start_update_epoch", config.glofnd.start_update_epoch,
           f"it is after glofnd.start_mask_epoch={config.glofnd.start_mask_epoch}; the mask would "
           "use thresholds never learned. Set start_mask_epoch >= start_update_epoch.")
  _require(0 < config.glofnd.alpha < 1, "glofnd.alpha", config.glofnd.alpha,
           "alpha is the fraction of negatives treated as false negatives; it must lie in "
           "(0, 1), e.g. 0.01.")
  _require(config.glofnd.treatment in treatments.TREATMENTS, "glofnd.treatment",
           config.glofnd.treatment, f"choose one of {', '.join(treatments.TREATMENTS)}.")
  _require(config.glofnd.tau_w > 0, "glofnd.tau_w", config.glofnd.tau_w,
           "reweight's sigmoid temperature must be positive, e.g. 0.05.")
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
  if "on_bad_sample" in d:
    _require(d.on_bad_sample in bad_records.POLICIES, "data.on_bad_sample", d.on_bad_sample,
             "use 'fail' or 'skip'.")
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
      raise errors.ConfigError(f"config.{field} is not a known config key (value {config[key]!r}): "
                       f"{hint} Every key is listed in glofnd_jax/config/unimodal.py:base_config() "
                       "(image-text: glofnd_jax/config/image_text.py).")
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




def load_config_file(path, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config()`` (or ``get_config(arg)``) of the config file at ``path``.

  The one way the package, the command line (:mod:`glofnd_jax.config.overrides`), tests and
  benchmarks read a recipe by path. Errors name the file and the fix.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingFileError(f"config file {str(path)!r} does not exist: pass a config file "
                                  "or the name of a recipe in glofnd_jax/recipes/.")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise errors.ConfigError(
        f"config file {str(path)!r} has no get_config(): a config file is a Python module whose "
        "get_config() returns an ml_collections.ConfigDict. Add `def get_config():` returning "
        "e.g. glofnd_jax.config.unimodal.base_config() with your changes (see the recipes in "
        "glofnd_jax/recipes/).")
  return module.get_config(arg) if arg else module.get_config()
