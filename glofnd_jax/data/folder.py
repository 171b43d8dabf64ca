"""Converts a folder of images into our ArrayRecord format, with train/val/test splits.

Input layouts (the torchvision ``ImageFolder`` convention)::

    SRC/<class name>/<any name>.<png|jpg|jpeg|bmp|gif|webp|tif|tiff>      one folder: the
        splits are drawn from it (``val_fraction``, ``test_fraction``; stratified by class,
        seeded), or it is written whole as one ``split``
    SRC/train/<class name>/...  SRC/val/<class name>/...  SRC/test/<class name>/...
        the splits as given (``val`` and ``test`` optional; their classes must be train's)

Classes are the (train) subfolder names in sorted order (label = position); files are taken in
sorted order, so a record's index is reproducible. Every image is verified by a full decode; a
file that does not decode is named and skipped (``on_bad_image="skip"``: counted, and listed
in ``OUT/conversion_report.json``) or stops the conversion (``"fail"``). Images are normalised
on the way in (:mod:`glofnd_jax.data.image_files`): EXIF rotation applied, 16-bit scaled to
8 bits, palette/CMYK to RGB, transparency over white.

Without ``image_size`` a file that needed no change is stored as its original bytes, any other
as a PNG of the normalised image, decoded and resized in the input pipeline to
``config.data.image_size``; with it, images are converted to RGB, resized (shorter side to fit,
centre crop) and stored as raw uint8 arrays (larger files, no decoding during training).

Writes are atomic: the splits are written in a staging folder inside ``OUT`` and moved in once
every one is complete, ``metadata.json`` last; a failure leaves ``OUT`` as it was and no
temporary file behind. Each record keeps its source file's path (relative to ``SRC``), so a
record that fails to decode at train time is named by index and file.

Command line (:func:`main`)::

    glofnd-jax convert-folder SRC OUT [--val-fraction 0.1 --test-fraction 0.1] [--image-size 64]
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Iterator, Sequence

import numpy as np

from glofnd_jax import arguments, errors
from glofnd_jax.data import image_files, records
from glofnd_jax.data.decode import resize_image

IMAGE_EXTENSIONS = image_files.IMAGE_EXTENSIONS
SPLITS = ("train", "val", "test")
REPORT_FILE = "conversion_report.json"
BAD_IMAGE_POLICIES = ("skip", "fail")


def list_images(src_dir: str | os.PathLike) -> tuple[list[str], list[tuple[pathlib.Path, int]]]:
  """``(class_names, [(path, label), ...])`` of a folder of class subfolders, sorted."""
  src = pathlib.Path(src_dir)
  if not src.is_dir():
    raise errors.MissingFileError(f"{src} is not a directory: pass a folder of class subfolders.")
  class_names = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not class_names:
    raise errors.DataError(
        f"{src} has no class subfolders: expected SRC/<class name>/<image files>.")
  files = []
  for label, name in enumerate(class_names):
    for path in sorted((src / name).rglob("*")):
      if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        files.append((path, label))
  if not files:
    raise errors.DataError(f"{src} has class subfolders but no image files ({IMAGE_EXTENSIONS}).")
  return class_names, files


def stratified_split(labels: Sequence[int], val_fraction: float, test_fraction: float,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Seeded, per-class split of ``range(len(labels))`` into sorted train/val/test indices.

  Each class gives ``round(fraction * n)`` of its files to val and test, at least one to test
  (when ``test_fraction > 0`` and it has 2 files) and to val (``val_fraction > 0``, 3 files),
  and always keeps at least one for train.
  """
  for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
    if not 0 <= fraction < 1:
      raise errors.ConfigError(f"--{name.replace('_', '-')}={fraction} must lie in [0, 1).")
  if val_fraction + test_fraction >= 1:
    raise errors.ConfigError(f"--val-fraction={val_fraction} and --test-fraction={test_fraction} "
                             "leave nothing to train on: keep their sum below 1.")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  parts = {split: [] for split in SPLITS}
  for label in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == label))
    n = len(rows)
    n_test = max(int(test_fraction > 0 and n >= 2), round(test_fraction * n))
    n_val = max(int(val_fraction > 0 and n >= 3), round(val_fraction * n))
    while n_test + n_val > n - 1:  # train keeps one
      if n_val >= n_test:
        n_val -= 1
      else:
        n_test -= 1
    parts["test"].append(rows[:n_test])
    parts["val"].append(rows[n_test:n_test + n_val])
    parts["train"].append(rows[n_test + n_val:])
  return {split: np.sort(np.concatenate(rows)).astype(np.int64) for split, rows in parts.items()}


def plan_splits(src_dir, *, split: str | None, val_fraction: float, test_fraction: float,
                seed: int) -> tuple[list[str], dict[str, list[tuple[pathlib.Path, int]]]]:
  """``(class_names, {split: [(path, label), ...]})`` of the layout of ``src_dir``."""
  src = pathlib.Path(src_dir)
  if (src / "train").is_dir() and split is None:
    class_names, files = list_images(src / "train")
    plan = {"train": files}
    for name in SPLITS[1:]:
      if (src / name).is_dir():
        names, split_files = list_images(src / name)
        unknown = sorted(set(names) - set(class_names))
        if unknown:
          raise errors.DataError(f"{src / name} has classes {unknown[:5]} that {src / 'train'} "
                                 "lacks: every class of val/test needs training images.")
        relabel = {k: class_names.index(n) for k, n in enumerate(names)}
        plan[name] = [(path, relabel[label]) for path, label in split_files]
    return class_names, plan
  class_names, files = list_images(src)
  if split is not None:
    return class_names, {split: files}
  parts = stratified_split([label for _, label in files], val_fraction, test_fraction, seed)
  return class_names, {name: [files[i] for i in rows] for name, rows in parts.items()
                       if len(rows) or name == "train"}


@dataclasses.dataclass
class _Tally:
  """What a conversion wrote and skipped."""
  written: dict = dataclasses.field(default_factory=dict)
  class_counts: dict = dataclasses.field(default_factory=dict)
  skipped: list = dataclasses.field(default_factory=list)


def _examples(split: str, files, src: pathlib.Path, image_size, on_bad_image: str,
              tally: _Tally, num_classes: int) -> Iterator[tuple[bytes | np.ndarray, int, str]]:
  counts = np.zeros(num_classes, np.int64)
  for path, label in files:
    source = str(path.relative_to(src))
    try:
      image, data = image_files.load_verified(path)
    except image_files.BadImage as bad:
      if on_bad_image == "fail":
        raise errors.DataError(f"{path} does not decode ({bad}): fix or remove it, or pass "
                               "--on-bad-image=skip to skip such files.") from None
      tally.skipped.append({"split": split, "path": source, "reason": str(bad)})
      print(f"skipped {path}: {bad}", flush=True)
      continue
    counts[label] += 1
    if image_size is None:
      yield data, label, source
    else:
      rgb = np.asarray(image.convert("RGB"))
      yield resize_image(rgb, image_size), label, source
  tally.class_counts[split] = counts.tolist()


def convert_folder(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   image_size: int | tuple[int, int] | None = None, *,
                   split: str | None = None, val_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 0,
                   on_bad_image: str = "skip") -> records.ImageDatasetInfo:
  """Writes ``src_dir``'s images as the splits of the dataset at ``out_dir``.

  Args:
    src_dir: a folder of class subfolders, or of ``train/ val/ test/`` folders of them.
    out_dir: dataset directory to write (created if missing). Converting another folder into
      an existing ``out_dir`` adds or replaces splits; their class names must agree.
    image_size: None to keep the (normalised) encoded files; an int or ``(height, width)`` to
      store resized RGB uint8 arrays of that size.
    split: write the whole folder as this one split (no val/test drawn from it).
    val_fraction, test_fraction: the shares of each class drawn for val and test from a single
      folder (ignored with ``split`` or ``train/`` subfolders).
    seed: the seed of that draw.
    on_bad_image: ``"skip"`` (named, counted, listed in ``conversion_report.json``) or ``"fail"``.

  Returns:
    The dataset's :class:`~glofnd_jax.data.records.ImageDatasetInfo` after the write; its
    ``extra["conversion"]`` holds the counts, the skipped files and the images/s.
  """
  if on_bad_image not in BAD_IMAGE_POLICIES:
    raise errors.ConfigError(f"--on-bad-image={on_bad_image!r}: use one of {BAD_IMAGE_POLICIES}.")
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  src, out = pathlib.Path(src_dir), pathlib.Path(out_dir)
  class_names, plan = plan_splits(src, split=split, val_fraction=val_fraction,
                                  test_fraction=test_fraction, seed=seed)
  encoding = "encoded" if image_size is None else "raw"
  image_shape = None if image_size is None else [image_size[0], image_size[1], 3]
  try:
    info = records.read_info(out)
  except FileNotFoundError:
    info = records.ImageDatasetInfo(num_classes=len(class_names), class_names=class_names,
                                    image_shape=image_shape, encoding=encoding)
  if info.class_names != class_names:
    raise errors.DataError(f"{src_dir} has classes {class_names[:5]}... but {out} already holds "
                           f"{info.class_names[:5]}...: write it to another directory.")
  if info.image_shape != image_shape or info.encoding != encoding:
    # Splits of one dataset may differ in storage; then no single shape describes it.
    info.image_shape, info.encoding = None, "mixed"
  tally, start = _Tally(), time.perf_counter()
  out.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".convert_tmp", dir=out))
  try:
    for name, files in plan.items():
      tally.written[name] = records.write_split(
          staging, name, _examples(name, files, src, image_size, on_bad_image, tally,
                                   len(class_names)))
    seconds = time.perf_counter() - start
    for name in plan:  # every split is complete: move them in, the metadata last
      os.replace(records.split_path(staging, name), records.split_path(out, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  info.splits.update(tally.written)
  extra = info.extra
  for name in plan:
    extra.setdefault("source_dirs", {})[name] = str(src.resolve())  # records name files in it
    extra.setdefault("class_counts", {})[name] = tally.class_counts[name]
  total = sum(tally.written.values()) + len(tally.skipped)
  extra["conversion"] = {"written": tally.written, "num_skipped": len(tally.skipped),
                         "seconds": round(seconds, 3),
                         "images_per_sec": round(total / max(seconds, 1e-9), 1)}
  _write_json(out / REPORT_FILE, {**extra["conversion"], "skipped": tally.skipped,
                                  "on_bad_image": on_bad_image})
  records.write_info(out, info)
  return info


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1) + "\n")
  os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
  """``glofnd-jax convert-folder``; returns the process exit status."""
  parser = arguments.ArgumentParser(
      prog="glofnd-jax convert-folder",
      description="Convert a folder of images to glofnd_jax ArrayRecord, with the train/val/test "
      "splits training and evaluation read.\n\nSRC is SRC/<class>/<images> (val and test are "
      "drawn from it, stratified by class) or\nSRC/train/<class>/..., SRC/val/..., SRC/test/... "
      "(used as given). Every image is decoded\nonce to verify it; see --on-bad-image.")
  parser.add_argument("src_dir", help="folder of class subfolders (or of train/ val/ test/)")
  parser.add_argument("out_dir", help="dataset directory to write (config.data.data_dir)")
  parser.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of each class drawn for the val split (one folder)")
  parser.add_argument("--test-fraction", type=float, default=0.1,
                      help="share of each class drawn for the test split (one folder)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the split draw")
  parser.add_argument("--split", default=None,
                      help="write the whole folder as this one split instead")
  parser.add_argument("--image-size", type=int, default=None,
                      help="store square RGB arrays of this size (default: keep the files; the "
                      "pipeline resizes to config.data.image_size)")
  parser.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="skip",
                      help="a file that does not decode: skip it (listed in "
                      f"OUT/{REPORT_FILE}) or fail")
  args = parser.parse_args(argv)
  info = convert_folder(args.src_dir, args.out_dir, args.image_size, split=args.split,
                        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                        seed=args.seed, on_bad_image=args.on_bad_image)
  done = info.extra["conversion"]
  written = ", ".join(f"{name} {count}" for name, count in done["written"].items())
  skipped = (f"; skipped {done['num_skipped']} file(s) that do not decode, listed in "
             f"{pathlib.Path(args.out_dir) / REPORT_FILE}" if done["num_skipped"] else "")
  print(f"wrote {written} images of {info.num_classes} classes to {args.out_dir} at "
        f"{done['images_per_sec']:.0f} images/s{skipped}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
