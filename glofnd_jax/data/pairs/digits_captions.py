"""The embedded image-caption default: the digits, each paired with a caption from a template.

scikit-learn's handwritten digits (:mod:`glofnd_jax.data.digits`, same train/val/test split) get
a caption drawn (seeded) from :data:`CAPTION_TEMPLATES` for their class: "a handwritten seven",
"the digit 7 written by hand", ... The pairs are written once as webdataset shards under the
work directory, in the layout of an img2dataset download (``000123.png``, ``000123.txt``,
``000123.json`` with the key and the label), so the default run goes through the real shard
reader, index contract included. Captions of one class often repeat word for word: every batch
holds genuine false negatives, which is what GloFND is for.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image

from glofnd_jax.data import digits
from glofnd_jax.data.pairs.shards import ShardWriter

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {name}: the class's word, {digit}: its numeral.
CAPTION_TEMPLATES = (
    "a handwritten {name}",
    "the digit {digit} written by hand",
    "a scan of a handwritten {name}",
    "a small picture of the number {name}",
    "the numeral {digit}, drawn with a pen",
    "an image of the digit {name}",
    "a blurry {name} on white paper",
    "someone wrote the number {digit}",
)
# Zero-shot prompts: "{}" is replaced by the class name (the config's eval.zeroshot_templates).
ZERO_SHOT_TEMPLATES = ("a handwritten {}", "an image of the digit {}", "a picture of the number {}")
SHARDS_PER_SPLIT = {"train": 4, "val": 1, "test": 2}
_VERSION = 1
_DONE = "done.json"


def caption(label: int, template: int) -> str:
  """The caption of class ``label`` from template number ``template``."""
  return CAPTION_TEMPLATES[template].format(name=CLASS_NAMES[label], digit=label)


def all_captions() -> list[str]:
  """Every caption the templates can produce (what the default tokenizer is trained on)."""
  return [caption(label, t) for label in range(10) for t in range(len(CAPTION_TEMPLATES))]


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image[:, :, 0]).save(buffer, format="PNG")
  return buffer.getvalue()


def split_pattern(directory: str | os.PathLike, split: str) -> str:
  """The shard glob of one split of a directory made by :func:`prepare_digits_captions`."""
  if split not in SHARDS_PER_SPLIT:
    raise ValueError(f"digits_captions split {split!r} is not one of {tuple(SHARDS_PER_SPLIT)}.")
  return str(pathlib.Path(directory) / f"{split}-*.tar")


def _is_complete(directory: pathlib.Path, seed: int) -> bool:
  try:
    done = json.loads((directory / _DONE).read_text())
  except (OSError, ValueError):
    return False
  return done.get("version") == _VERSION and done.get("seed") == seed and all(
      (directory / name).is_file() for name in done.get("shards", []))


def prepare_digits_captions(root_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
  """Writes (or reuses) the digits image-caption shards under ``root_dir``; returns their folder.

  Args:
    root_dir: parent directory, e.g. ``<workdir>/data``.
    seed: the digits split seed and the caption draw seed.

  Returns:
    ``root_dir/digits_captions_seed<seed>`` holding ``train-0000{0..3}.tar``, ``val-00000.tar``,
    ``test-0000{0,1}.tar``; keys are ``0 .. n-1`` within each split (the digits' record order).
  """
  directory = pathlib.Path(root_dir) / f"digits_captions_seed{seed}"
  if _is_complete(directory, seed):
    return directory
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".digits_captions_tmp", dir=directory.parent))
  try:
    written = []
    for split_id, (split, num_shards) in enumerate(SHARDS_PER_SPLIT.items()):
      source = digits.digits_source(root_dir, split, seed=seed)
      rng = np.random.default_rng([seed, split_id])
      templates = rng.integers(0, len(CAPTION_TEMPLATES), len(source))
      bounds = np.linspace(0, len(source), num_shards + 1).astype(int)
      for shard in range(num_shards):
        name = f"{split}-{shard:05d}.tar"
        with ShardWriter(tmp / name) as writer:
          for key in range(bounds[shard], bounds[shard + 1]):
            record = source[key]
            label = int(record["label"])
            text = caption(label, int(templates[key]))
            writer.write(f"{key:06d}", {
                "png": _png(record["image"]), "txt": text.encode(),
                "json": json.dumps({"key": key, "label": label, "caption": text}).encode()})
        written.append(name)
    (tmp / _DONE).write_text(json.dumps({"version": _VERSION, "seed": seed, "shards": written,
                                         "class_names": list(CLASS_NAMES)}))
    if directory.exists():
      shutil.rmtree(directory)
    try:
      os.replace(tmp, directory)
    except OSError:
      if not _is_complete(directory, seed):  # another process finished first, or a real error
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return directory
