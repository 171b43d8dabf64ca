"""Shared by the CLIP training tests: tiny caption shards and a tiny version of any clip config."""

import json
import pathlib

import numpy as np

from glofnd_jax.config.common import load_config_file
from glofnd_jax.data import synthetic
from glofnd_jax.data.pairs.shards import ShardWriter

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
CLIP_CONFIGS = ("digits_clip_glofnd", "cc3m_fastclip_glofnd", "cc3m_sogclr_glofnd")
CLASS_NAMES = ("red", "green", "blue", "black")
TEMPLATES = ("a photo of {}", "a {} picture")
NUM_TRAIN = 64


def load_config(name: str):
  path = CONFIG_DIR / f"{name}.py"
  return load_config_file(path)


def _png(image: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def write_caption_shards(root: pathlib.Path, size: int, channels: int) -> dict[str, str]:
  """Class-structured image-caption shards: train (64 pairs, key 10 a hole, plus one pair with an
  empty caption that the run skips) in 2 shards, test (24 pairs) in 1. Returns the patterns."""
  patterns = {}
  for split, count, seed in (("train", NUM_TRAIN, 0), ("test", 24, 1)):
    source = synthetic.SyntheticSource(num_samples=count + 1, image_shape=(size, size, channels),
                                       num_classes=len(CLASS_NAMES), seed=0, split=split)
    keys = [k if k < 10 or split != "train" else k + 1 for k in range(count)]
    rng = np.random.default_rng(seed)
    samples = []
    for position, key in enumerate(keys):
      record = source[position]
      label = int(record["label"])
      text = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(CLASS_NAMES[label])
      samples.append((f"{key:05d}", record["image"], text, key, label))
    if split == "train":
      bad = source[count]
      samples.append(("bad", bad["image"], "", 200, int(bad["label"])))
    halves = (samples[:len(samples) // 2], samples[len(samples) // 2:]) if split == "train" \
        else (samples,)
    for shard, chunk in enumerate(halves):
      with ShardWriter(root / f"{split}-{shard}.tar") as writer:
        for name, image, text, key, label in chunk:
          writer.write(name, {"png": _png(image), "txt": text.encode(),
                              "json": json.dumps({"key": key, "label": label}).encode()})
    patterns[split] = str(root / f"{split}-*.tar")
  return patterns


def tiny(config, shards: dict[str, str], *, epochs: int = 2):
  """``config``'s recipe (loss, detection, optimiser kind, tower kind) at toy sizes."""
  c = config
  c.data.name = "webdataset"
  c.data.train_shards, c.data.test_shards = shards["train"], shards["test"]
  c.data.train_split, c.data.val_split, c.data.test_split = "train", "", "test"
  c.data.image_size = 8 if c.augment.kind == "digits" else 32
  c.data.read_threads = 0
  c.data.index_workers = 1
  c.tokenizer.context_length = 8
  c.tokenizer.vocab_size = 400
  c.tokenizer.min_frequency = 1
  c.model.embed_dim = 16
  c.model.resnet_layers = (1, 1, 1, 1)
  c.model.vision_width = 8
  c.model.cnn_widths = (4, 8, 8)
  c.model.cnn_feature_dim = 16
  c.model.text_width = 32
  c.model.text_layers = 1
  c.model.text_heads = 4
  c.batch_size = 16
  c.epochs = epochs
  c.optim.warmup_steps = 2
  c.glofnd.start_update_epoch = 1
  c.glofnd.start_mask_epoch = 1
  c.loss.gamma_decay_epochs = 2
  c.log_every_steps = 2
  c.checkpoint_every_steps = 1000  # only the final save: orbax saves cost time in tests
  c.eval.batch_size = 16
  c.eval.zeroshot_class_names = CLASS_NAMES
  c.eval.zeroshot_templates = ("a photo of {}",)
  c.eval.fn_max_samples = 40
  return c
