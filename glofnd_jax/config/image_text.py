"""The config schema of image-text (CLIP) runs, ``task = "clip"``, and its translation.

Config files (``configs/*clip*.py``, ``configs/cc3m_*.py``) start from :func:`clip_base_config`
and override what their recipe needs; every key is listed here with its meaning. Command-line
overrides use the same names (``--config.loss.version=v1``). The ``glofnd`` and ``augment``
sections mean what they mean in :func:`glofnd_jax.config.unimodal.base_config`.
"""

from __future__ import annotations

import ml_collections

from glofnd_jax import detection, objectives, siglip
from glofnd_jax.config import common as config_common
from glofnd_jax.data.pairs.integrity import DAMAGED_SHARD_POLICIES
from glofnd_jax.models import clip as clip_models
from glofnd_jax.training import optim


def clip_base_config() -> ml_collections.ConfigDict:
  # image-text: FastCLIP v1/v3 + GloFND (training/image_text.py)
  c = config_common.run_section("clip", batch_size=1024, epochs=37, log_every_steps=100,
                                checkpoint_every_steps=2000, lambda_snapshot_every_epochs=1)

  c.data = ml_collections.ConfigDict()
  c.data.name = "webdataset"   # digits_captions | webdataset | arrayrecord_captions | tfds:<name>
  c.data.train_shards = ""     # webdataset: shard pattern, e.g. /data/cc3m/{00000..00331}.tar
  c.data.val_shards = ""
  c.data.test_shards = ""      # the held-out pairs of the retrieval evaluation
  c.data.data_dir = ""         # arrayrecord_captions / tfds: the dataset directory
  c.data.train_split = "train"
  c.data.val_split = ""        # not read yet (nothing is selected on a validation split)
  c.data.test_split = "test"   # "" = no retrieval / zero-shot on held-out pairs
  c.data.key_field = "key"     # json field holding a sample's global index (its key)
  c.data.caption_field = "caption"  # json caption field, when a sample has no .txt
  c.data.label_field = "label"      # json class label (optional; enables FN precision/recall)
  c.data.index_dir = ""        # shard-index and bad-sample cache ("" = <workdir>/data/index)
  c.data.index_workers = 4     # threads indexing shards and screening samples
  c.data.on_bad_sample = "skip"  # skip (count, leave out) | fail (error naming shard and key)
  # A webdataset shard cut short or unreadable, or not matching its manifest: fail (error naming
  # the shard, byte offset, last good key) | skip (train on its intact samples; reported).
  c.data.on_damaged_shard = "fail"
  c.data.verify_images = True  # decode every image once before training (cached)
  c.data.image_size = 224      # images are resized to this in the input pipeline
  c.data.channels = 3
  c.data.resize_mode = "center_crop"  # center_crop | stretch
  c.data.read_threads = 2

  c.augment = ml_collections.ConfigDict()  # as unimodal_config.base_config's augment section
  c.augment.kind = "simclr"    # digits | simclr (a random resized crop and nothing else below)
  c.augment.crop_size = 0      # 0 = the input size (data.image_size)
  c.augment.crop_scale = (0.9, 1.0)  # open_clip's training crop
  c.augment.flip_prob = 0.0
  c.augment.jitter_prob = 0.0
  c.augment.jitter_strength = 1.0
  c.augment.grayscale_prob = 0.0
  c.augment.blur_prob = 0.0
  c.augment.mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation
  c.augment.std = (0.26862954, 0.26130258, 0.27577711)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""        # tokenizer.json; "" = <workdir>/tokenizer.json, trained on the
  #                              training captions on first use (single-process runs)
  c.tokenizer.context_length = 77
  c.tokenizer.vocab_size = 49408  # when training one
  c.tokenizer.min_frequency = 2   # when training one
  c.tokenizer.sot_token = "<start_of_text>"
  c.tokenizer.eot_token = "<end_of_text>"

  c.model = ml_collections.ConfigDict()
  c.model.name = "RN50"        # a display name
  c.model.image_tower = "modified_resnet"  # modified_resnet | vit | small_cnn
  c.model.embed_dim = 1024     # joint embedding dimension
  c.model.resnet_layers = (3, 4, 6, 3)
  c.model.vision_width = 64    # resnet: first-stage width; vit: transformer width
  c.model.vision_heads = 0     # 0 = CLIP's default (resnet 32*width/64, vit width/64)
  c.model.vit_layers = 12
  c.model.patch_size = 32
  c.model.cnn_widths = (32, 64, 128)  # small_cnn
  c.model.cnn_feature_dim = 256       # small_cnn
  c.model.text_width = 512
  c.model.text_layers = 12
  c.model.text_heads = 8
  c.model.activation = "gelu"  # gelu | quick_gelu (OpenAI's checkpoints)
  c.model.dtype = "float32"    # or bfloat16 (loss-side numerics stay float32)

  c.loss = ml_collections.ConfigDict()
  c.loss.name = ""             # fastclip_v1 | fastclip_v3 | siglip; "" = fastclip_{version}
  c.loss.impl = "dense"        # siglip: dense | ring (text chunks passed around the mesh)
  c.loss.version = "v3"        # v3: learnable temperature (FastCLIP) | v1: constant (SogCLR)
  c.loss.temperature = 0.07    # v3: initial temperature; v1: the constant one
  c.loss.rho = 6.5             # v3's rho
  c.loss.eps = 1e-14           # added to u in the loss
  c.loss.gamma_min = 0.2       # u's rate decays by cosine from 1 to this ...
  c.loss.gamma_decay_epochs = 18  # ... over this many epochs
  c.loss.gamma_schedule = "cosine"  # cosine | constant (gamma_min from epoch 1)

  c.glofnd = config_common.glofnd_section(  # FastCLIP passes its eps to the threshold Adam
      alpha=1e-3, eps=1e-14, start_update_epoch=20, start_mask_epoch=20)
  c.glofnd.reset_lambda_on_resume = False  # on resume: lambda = lam_init, moments 0 (u kept)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"       # adamw (the only choice for CLIP)
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10000  # linear warmup in steps, then cosine to 0
  c.optim.weight_decay = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999           # CLIP: 0.999 for ResNets, 0.98 for ViTs
  c.optim.eps = 1e-8           # CLIP: 1e-8 for ResNets, 1e-6 for ViTs
  c.optim.lr_tau = 2e-4        # the temperature's learning rate (v3)
  c.optim.temperature_schedule = "step_thresh"  # step_thresh | const | cosine

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.retrieval_ks = (1, 5, 10)
  c.eval.zeroshot_dataset = ""  # "" = the held-out pairs (needs labels), or a classification
  #                               dataset name of glofnd_jax.data.get_source (tfds:imagenet2012)
  c.eval.zeroshot_split = "test"
  c.eval.zeroshot_data_dir = ""
  c.eval.zeroshot_class_names = ()  # () = the dataset's class names
  c.eval.zeroshot_templates = ("a photo of a {}.",)  # "{}" = the class name; embeddings averaged
  c.eval.fn_max_samples = 5000  # FN precision/recall on at most this many training pairs
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Field checks of a clip config (builders check their own fields too)."""
  config_common.validate(config)
  config_common.check_known_keys(config, clip_base_config())
  req = config_common._require  # pylint: disable=protected-access
  req(config.loss.version in ("v1", "v3"), "loss.version", config.loss.version,
      "use 'v3' (learnable temperature) or 'v1' (constant).")
  req(config.loss.name in LOSS_NAMES, "loss.name", config.loss.name,
      f"choose one of {', '.join(n for n in LOSS_NAMES if n)} ('' = fastclip_<loss.version>).")
  req(config.data.get("on_damaged_shard", "fail") in DAMAGED_SHARD_POLICIES,
      "data.on_damaged_shard", config.data.get("on_damaged_shard"), "use 'fail' or 'skip'.")
  req(config.model.image_tower in clip_models.IMAGE_TOWERS, "model.image_tower",
      config.model.image_tower, f"choose one of {', '.join(clip_models.IMAGE_TOWERS)}.")
  req(config.optim.name == "adamw", "optim.name", config.optim.name,
      "CLIP training uses 'adamw'.")
  req(config.optim.warmup_steps >= 0, "optim.warmup_steps", config.optim.warmup_steps,
      "use >= 0.")
  req(config.optim.temperature_schedule in optim.TEMPERATURE_SCHEDULES,
      "optim.temperature_schedule", config.optim.temperature_schedule,
      f"choose one of {', '.join(optim.TEMPERATURE_SCHEDULES)}.")
  req(config.tokenizer.context_length >= 3, "tokenizer.context_length",
      config.tokenizer.context_length, "use >= 3 (CLIP: 77).")
  req(config.glofnd.mode != "oracle" or config.data.label_field, "glofnd.mode",
      config.glofnd.mode, "'oracle' needs class labels: set data.label_field.")
  req(config.glofnd.mode in detection.MODES, "glofnd.mode", config.glofnd.mode,
      f"choose one of {', '.join(detection.MODES)}.")


LOSS_NAMES = ("", "fastclip_v1", "fastclip_v3", "siglip")


def loss_name(config) -> str:
  """``loss.name``, with ``""`` mapped to ``fastclip_<loss.version>``."""
  return config.loss.name or f"fastclip_{config.loss.version}"


def siglip_recipe(base_recipe, impl: str = "dense") -> ml_collections.ConfigDict:
  """The clip recipe file ``base_recipe`` switched to SigLIP: logit scale from 10 and bias from
  -10 (the paper), both learned at the network's learning rate; flagged negatives removed."""
  config = config_common.load_config_file(base_recipe)
  config.loss.name, config.loss.impl = "siglip", impl
  config.loss.temperature = 0.1
  config.optim.lr_tau = config.optim.lr
  config.optim.temperature_schedule = "const"
  return config


def bimodal_objective_config(config) -> objectives.BimodalConfig:
  validate(config)
  l = config.loss
  name = loss_name(config)
  return objectives.BimodalConfig(
      loss="siglip" if name == "siglip" else "fastclip", impl=l.impl,
      version=name.removeprefix("fastclip_") if name != "siglip" else l.version, mode=config.glofnd.mode,
      thresholds=config_common.threshold_config(config),
      alphas=tuple(float(a) for a in config.glofnd.alphas), rho=l.rho, eps=l.eps,
      gamma_min=l.gamma_min, gamma_decay_epochs=l.gamma_decay_epochs,
      gamma_schedule=l.gamma_schedule, quantile_metric=bool(config.glofnd.quantile_metric),
      treatment=config.glofnd.treatment, tau_w=float(config.glofnd.tau_w))


def build_model(config, vocab_size: int) -> clip_models.CLIP:
  m = config.model
  return clip_models.build_clip(
      image_tower=m.image_tower, embed_dim=m.embed_dim, vocab_size=vocab_size,
      context_length=config.tokenizer.context_length, temperature=config.loss.temperature,
      resnet_layers=tuple(m.resnet_layers), vision_width=m.vision_width,
      vision_heads=m.vision_heads, vit_layers=m.vit_layers, patch_size=m.patch_size,
      cnn_widths=tuple(m.cnn_widths), cnn_feature_dim=m.cnn_feature_dim,
      text_width=m.text_width, text_layers=m.text_layers, text_heads=m.text_heads,
      activation=m.activation, dtype=m.dtype,
      bias_init=siglip.BIAS_INIT if loss_name(config) == "siglip" else None)
