"""Converts a folder of class subfolders of images into our ArrayRecord format.

Input layout (the torchvision ``ImageFolder`` convention)::

    SRC/<class name>/<any name>.<png|jpg|jpeg|bmp|gif|webp|tif|tiff>

Classes are the subfolder names in sorted order (label = position); files are taken in sorted
order, so a record's index is reproducible. Without ``image_size`` the original file bytes are
stored and decoded in the input pipeline (pass ``image_size`` to the pipeline then, unless all
images share a size); with it, images are converted to RGB, resized (shorter side to fit, centre
crop) and stored as raw uint8 arrays (larger files, no decoding during training).

Command line (:func:`main`)::

    glofnd-jax convert-folder SRC OUT [--image_size 64] [--split train]
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Iterator, Sequence

from glofnd_jax.data import records
from glofnd_jax.data.decode import decode_image, resize_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(src_dir: str | os.PathLike) -> tuple[list[str], list[tuple[pathlib.Path, int]]]:
  """``(class_names, [(path, label), ...])`` of a folder of class subfolders, sorted."""
  src = pathlib.Path(src_dir)
  if not src.is_dir():
    raise FileNotFoundError(f"{src} is not a directory.")
  class_names = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not class_names:
    raise ValueError(f"{src} has no class subfolders: expected SRC/<class name>/<image files>.")
  files = []
  for label, name in enumerate(class_names):
    for path in sorted((src / name).rglob("*")):
      if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        files.append((path, label))
  if not files:
    raise ValueError(f"{src} has class subfolders but no image files ({IMAGE_EXTENSIONS}).")
  return class_names, files


def _examples(files: Sequence[tuple[pathlib.Path, int]],
              image_size: tuple[int, int] | None) -> Iterator[tuple[bytes | object, int]]:
  for path, label in files:
    data = path.read_bytes()
    if image_size is None:
      yield data, label
    else:
      yield resize_image(decode_image(data, channels=3), image_size), label


def convert_folder(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   image_size: int | tuple[int, int] | None = None, *,
                   split: str = "train") -> records.ImageDatasetInfo:
  """Writes ``src_dir``'s images as split ``split`` of the dataset at ``out_dir``.

  Converting several folders into one ``out_dir`` (e.g. ``train`` then ``val``) adds splits;
  their class names must agree.

  Args:
    src_dir: folder of class subfolders.
    out_dir: dataset directory to write (created if missing).
    image_size: None to keep the original encoded files; an int or ``(height, width)`` to store
      resized RGB uint8 arrays of that size.
    split: name of the split to write.

  Returns:
    The dataset's :class:`~glofnd_jax.data.records.ImageDatasetInfo` after the write.
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  class_names, files = list_images(src_dir)
  out = pathlib.Path(out_dir)
  encoding = "encoded" if image_size is None else "raw"
  image_shape = None if image_size is None else [image_size[0], image_size[1], 3]
  try:
    info = records.read_info(out)
  except FileNotFoundError:
    info = records.ImageDatasetInfo(num_classes=len(class_names), class_names=class_names,
                                    image_shape=image_shape, encoding=encoding)
  if info.class_names != class_names:
    raise ValueError(f"{src_dir} has classes {class_names[:5]}... but {out} already holds "
                     f"{info.class_names[:5]}...: write it to another directory.")
  if info.image_shape != image_shape or info.encoding != encoding:
    # Splits of one dataset may differ in storage; then no single shape describes it.
    info.image_shape, info.encoding = None, "mixed"
  info.splits[split] = records.write_split(out, split, _examples(files, image_size))
  info.extra.setdefault("source_dirs", {})[split] = str(pathlib.Path(src_dir).resolve())
  records.write_info(out, info)
  return info


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status."""
  parser = argparse.ArgumentParser(
      prog="glofnd-jax convert-folder",
      description="Convert a folder of class subfolders of images to glofnd_jax ArrayRecord.")
  parser.add_argument("src_dir", help="folder with one subfolder of images per class")
  parser.add_argument("out_dir", help="dataset directory to write")
  parser.add_argument("--image_size", type=int, default=None,
                      help="store square RGB arrays of this size (default: keep the files)")
  parser.add_argument("--split", default="train", help="split name (default: train)")
  args = parser.parse_args(argv)
  info = convert_folder(args.src_dir, args.out_dir, args.image_size, split=args.split)
  print(f"wrote {info.splits[args.split]} images of {info.num_classes} classes to "
        f"{args.out_dir} (split {args.split!r})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
