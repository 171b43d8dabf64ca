"""Fixtures shared by the tests: one tiny config per task, caption shards, ``glofnd-jax train``.

A tiny config is its task's recipe with only what makes a run tiny overridden (toy data, model,
schedule and evaluation sizes); the recipe's loss, detection, optimiser and tower kinds stay. The
fields are defined once here: in-process tests get them through ``tiny_unimodal`` /
``tiny_image_text``, the command-line runs of ``train_cli`` as ``--config.KEY=VALUE`` flags.
"""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from glofnd_jax.config import overrides
from glofnd_jax.data import synthetic
from glofnd_jax.data.pairs.shards import ShardWriter
from scaling_subprocess import finish, worker_env

REPO = pathlib.Path(__file__).resolve().parent.parent
DIGITS = "digits_sogclr_glofnd"  # the unimodal default recipe

# A unimodal run on 64 synthetic samples, batch 16 (4 steps an epoch), GloFND from epoch 1,
# a checkpoint every 3 steps. The command-line runs train with exactly these fields.
UNIMODAL_TRAINING = {
    "data.name": "synthetic", "data.synthetic_num_samples": 64, "data.val_split": "val",
    "data.test_split": "test", "data.read_threads": 0, "model.num_filters": 4,
    "model.proj_hidden_dim": 32, "model.proj_dim": 16, "batch_size": 16, "epochs": 2,
    "optim.warmup_epochs": 1, "glofnd.start_update_epoch": 1, "glofnd.start_mask_epoch": 1,
    "log_every_steps": 2, "checkpoint_every_steps": 3}
# ... and its evaluation (in-process runs; the command-line runs evaluate as their recipe says).
UNIMODAL_EVALUATION = {"eval.knn_k": 5, "eval.probe_fractions": (1.0, 0.25),
                       "eval.batch_size": 32, "eval.transfer": ("synthetic:train:test",)}

# The caption shards' classes (``caption_shards``), which the image-text zero-shot names.
CAPTION_CLASSES = ("red", "green", "blue", "black")
CAPTION_TEMPLATES = ("a photo of {}", "a {} picture")
CAPTION_TRAIN_PAIRS = 64
# An image-text run on those shards: batch 16, towers of a few thousand weights, GloFND from
# epoch 1, only the final checkpoint (orbax saves cost time in tests).
IMAGE_TEXT = {
    "data.name": "webdataset", "data.train_split": "train", "data.val_split": "",
    "data.test_split": "test", "data.read_threads": 0, "data.index_workers": 1,
    "tokenizer.context_length": 8, "tokenizer.vocab_size": 400, "tokenizer.min_frequency": 1,
    "model.embed_dim": 16, "model.resnet_layers": (1, 1, 1, 1), "model.vision_width": 8,
    "model.cnn_widths": (4, 8, 8), "model.cnn_feature_dim": 16, "model.text_width": 32,
    "model.text_layers": 1, "model.text_heads": 4, "batch_size": 16, "optim.warmup_steps": 2,
    "glofnd.start_update_epoch": 1, "glofnd.start_mask_epoch": 1, "loss.gamma_decay_epochs": 2,
    "log_every_steps": 2, "checkpoint_every_steps": 1000, "eval.batch_size": 16,
    "eval.zeroshot_class_names": CAPTION_CLASSES, "eval.zeroshot_templates": ("a photo of {}",),
    "eval.fn_max_samples": 40}


def set_fields(config, fields: dict):
  """``config`` with each ``"section.key": value`` of ``fields`` set."""
  for dotted, value in fields.items():
    *parents, name = dotted.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def as_flags(fields: dict) -> tuple[str, ...]:
  """``fields`` as the command line's ``--config.KEY=VALUE`` overrides."""
  return tuple(f"--config.{key}={value}" for key, value in fields.items())


def _tiny_unimodal(recipe=DIGITS, *, epochs: int = 2, **fields):
  """The unimodal ``recipe`` (name or path) at toy size, then ``fields`` (dotted keys) set."""
  config = set_fields(overrides.load(str(recipe)),
                      {**UNIMODAL_TRAINING, **UNIMODAL_EVALUATION, "epochs": epochs})
  simclr = config.augment.kind == "simclr"
  config.data.image_size = 16 if simclr else 8
  if simclr:
    config.augment.crop_size = 16
  return set_fields(config, fields)


def _tiny_image_text(recipe, shards: dict[str, str], *, epochs: int = 2):
  """The image-text ``recipe`` at toy size, reading ``shards`` (``caption_shards``)."""
  config = set_fields(overrides.load(str(recipe)), {
      **IMAGE_TEXT, "data.train_shards": shards["train"], "data.test_shards": shards["test"],
      "epochs": epochs})
  config.data.image_size = 8 if config.augment.kind == "digits" else 32
  return config


@pytest.fixture(scope="session")
def tiny_unimodal():
  """``tiny_unimodal(recipe=DIGITS, *, epochs=2, **{"section.key": value})``: a fresh config."""
  return _tiny_unimodal


@pytest.fixture(scope="session")
def tiny_image_text():
  """``tiny_image_text(recipe, shards, *, epochs=2)``: a fresh config."""
  return _tiny_image_text


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def _write_caption_shards(root: pathlib.Path, size: int, channels: int) -> dict[str, str]:
  """Class-structured image-caption shards: train (64 pairs, key 10 a hole, plus one pair with an
  empty caption that the run skips) in 2 shards, test (24 pairs) in 1. Returns the patterns."""
  patterns = {}
  for split, count, seed in (("train", CAPTION_TRAIN_PAIRS, 0), ("test", 24, 1)):
    source = synthetic.SyntheticSource(num_samples=count + 1, image_shape=(size, size, channels),
                                       num_classes=len(CAPTION_CLASSES), seed=0, split=split)
    keys = [k if k < 10 or split != "train" else k + 1 for k in range(count)]
    rng = np.random.default_rng(seed)
    samples = []
    for position, key in enumerate(keys):
      record = source[position]
      label = int(record["label"])
      text = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(
          CAPTION_CLASSES[label])
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


@pytest.fixture(scope="session")
def caption_shards():
  """``caption_shards(root, size, channels)`` writes the shards, returns their patterns."""
  return _write_caption_shards


class TrainCLI:
  """``glofnd-jax train`` of the tiny digits recipe in subprocesses, and their checkpoints.

  The device count is fixed when jax is imported, so runs on 4 or 8 fake devices (and runs that
  get signals) happen in subprocesses. Runs given one ``cache_dir`` share its compilations: a
  cached executable computes exactly what a fresh compile does, so bit-for-bit comparisons
  between runs stay valid.
  """

  recipe = REPO / "configs" / f"{DIGITS}.py"
  flags = as_flags(UNIMODAL_TRAINING)
  finish = staticmethod(finish)

  @staticmethod
  def env(devices: int = 1, cache_dir=None) -> dict:
    """The environment of one process on ``devices`` fake CPU devices."""
    out = worker_env(devices)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
      out.pop(name, None)
    if cache_dir is not None:
      out["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
      out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
      out["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return out

  def command(self, workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "glofnd_jax.cli", "train", f"--config={self.recipe}",
            f"--workdir={workdir}", *self.flags, *extra]

  def start(self, workdir, *extra: str, devices: int = 1, cache_dir=None) -> subprocess.Popen:
    """Start a tiny training run (output captured: stdout and stderr together)."""
    return subprocess.Popen(self.command(workdir, *extra), env=self.env(devices, cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def run(self, workdir, *extra: str, devices: int = 1, cache_dir=None,
          timeout: float = 240) -> str:
    return finish(self.start(workdir, *extra, devices=devices, cache_dir=cache_dir), timeout)

  @staticmethod
  def read_state(workdir, step: int | None = None, num_samples: int = 64) -> tuple[int, dict]:
    """``(step, {leaf path: numpy array})`` of a run's checkpoint, on this process's one device.

    Per-sample arrays are cut to ``num_samples`` rows (their padding to the device count is not
    part of the result); PRNG keys are compared by their key data.
    """
    manager = ocp.CheckpointManager(
        pathlib.Path(workdir).absolute() / "checkpoints",
        item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
      step = manager.latest_step() if step is None else step
      tree = manager.item_metadata(step)["state"].tree
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]
    finally:
      manager.close()
    out = {}
    for key, leaf in ocp.tree.to_flat_dict(restored).items():
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      value = np.asarray(leaf)
      if key[0] == "per_sample" and value.ndim and value.shape[0] >= num_samples:
        value = value[:num_samples]
      out["/".join(map(str, key))] = value
    return step, out

  @staticmethod
  def logged_steps(workdir) -> list[int]:
    """The steps of a run's complete ``metrics.jsonl`` rows so far."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
      return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.endswith("}")]

  def wait_until_logged(self, process: subprocess.Popen, workdir, step: int,
                        timeout: float = 240) -> None:
    """Return once the run of ``process`` has logged ``step`` or later; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in self.logged_steps(workdir)):
      assert process.poll() is None, finish(process)
      assert time.monotonic() < deadline, f"the run logged no step >= {step} in {timeout}s"
      time.sleep(0.02)


@pytest.fixture(scope="session")
def train_cli() -> TrainCLI:
  return TrainCLI()
