"""The unimodal (image SSL) config schema, ``task = "unimodal"``, and its translation.

Every recipe in ``configs/`` of this task starts from :func:`base_config` and overrides what its
recipe needs; every key is listed here with its meaning. Command-line overrides use the same names
(``--config.glofnd.mode=fnd``). Shared sections and checks: :mod:`glofnd_jax.config.common`.
"""

from __future__ import annotations

import ml_collections

from glofnd_jax import augment as augment_lib
from glofnd_jax import objectives
from glofnd_jax.config.common import glofnd_section, run_section, threshold_config, validate
from glofnd_jax.data import crops as data_crops


def base_config() -> ml_collections.ConfigDict:
  c = run_section("unimodal")

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"       # digits | glyphs | synthetic | arrayrecord | imagenet100 | tfds:*
  c.data.data_dir = ""         # our ArrayRecord dir or the TFDS data_dir ("" = default)
  c.data.train_split = "train"
  c.data.val_split = "val"     # "" = hold out eval.val_fraction of train for probe selection
  c.data.test_split = "test"
  c.data.image_size = 8        # images are resized to this in the input pipeline
  c.data.channels = 1
  # A record whose image does not decode: fail (one line naming its index and file) | skip (a
  # stand-in image takes its place; logged, listed in results.json; glofnd_jax.data.bad_records)
  c.data.on_bad_sample = "fail"
  # Input concurrency (glofnd_jax.data.iterators.concurrency); -1 = derived from the cores this
  # process may use (os.sched_getaffinity: SLURM --cpus-per-task, taskset):
  c.data.worker_count = -1     # grain worker processes; -1: 0 below 4 cores, else cores - 1
  c.data.read_threads = -1     # decode threads per reading process; -1: min(cores, 16), 2 per worker
  c.data.prefetch_batches = -1  # batches ready per reading process; -1: 2 * read_threads
  # Training views cut on the host: two random resized crops (augment.crop_size, crop_scale) of
  # the whole original image from one decode (JPEG DCT downscaling when they are large), sent as
  # uint8; the rest of the augmentation runs on device. False: the host resizes every image to
  # image_size and the device crops that (fine when images are stored at their training size).
  c.data.host_crop = False
  c.data.synthetic_num_samples = 256  # only for name="synthetic" (test stand-in data)

  c.augment = ml_collections.ConfigDict()
  c.augment.kind = "digits"    # digits | simclr (fields below override the recipe's defaults)
  c.augment.crop_size = 0      # simclr: output size (0 = input size)
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.flip_prob = 0.5
  c.augment.jitter_prob = 0.8
  c.augment.brightness = 0.4   # torchvision ColorJitter(brightness, contrast, saturation, hue)
  c.augment.contrast = 0.4
  c.augment.saturation = 0.2
  c.augment.hue = 0.1
  c.augment.jitter_strength = 1.0  # multiplies the four above
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = 1.0    # sigma uniform in [0.1, 2] pixels
  c.augment.solarize_prob = 0.0
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


def unimodal_objective_config(config) -> objectives.UnimodalConfig:
  validate(config)
  return objectives.UnimodalConfig(
      loss=config.loss.name, mode=config.glofnd.mode, thresholds=threshold_config(config),
      alphas=tuple(float(a) for a in config.glofnd.alphas),
      temperature=config.loss.temperature, gamma=config.loss.gamma,
      quantile_metric=bool(config.glofnd.quantile_metric),
      treatment=config.glofnd.treatment, tau_w=float(config.glofnd.tau_w))


def augment_config(config):
  a = config.augment
  if a.kind == "digits":
    return augment_lib.DigitsAugmentConfig()
  if a.kind == "simclr":
    s = a.jitter_strength
    return augment_lib.SimCLRAugmentConfig(
        crop_size=a.crop_size or None, crop_scale=tuple(a.crop_scale), flip_prob=a.flip_prob,
        jitter_prob=a.jitter_prob, brightness=a.get("brightness", 0.4) * s,
        contrast=a.get("contrast", 0.4) * s, saturation=a.get("saturation", 0.4) * s,
        hue=a.get("hue", 0.1) * s, grayscale_prob=a.grayscale_prob, blur_prob=a.blur_prob,
        solarize_prob=a.get("solarize_prob", 0.0), mean=tuple(a.mean), std=tuple(a.std))
  raise ValueError(f"config.augment.kind={a.kind!r} is unknown: use 'digits' or 'simclr'.")


def host_crop_config(config):
  """The host crop of the training views (``config.data.host_crop``), else None."""
  if not config.data.get("host_crop", False):
    return None
  a = config.augment
  if a.kind != "simclr" or not a.crop_size:
    raise ValueError("config.data.host_crop=True cuts SimCLR crops: set config.augment.kind="
                     "'simclr' and config.augment.crop_size (the views' size).")
  return data_crops.HostCropConfig(size=a.crop_size, scale=tuple(a.crop_scale))


def model_kwargs(config) -> dict:
  m = config.model
  kwargs = dict(proj_dim=m.proj_dim, proj_hidden_dim=m.proj_hidden_dim or None,
                proj_layers=m.proj_layers, dtype=m.dtype)
  if m.name.startswith("resnet"):
    kwargs.update(stem=m.stem, num_filters=m.num_filters)
  return kwargs
