"""The authors' torchvision DataLoader, timed: run by ``input_pipeline.py`` in a Python that has
torch and torchvision (``--torch-python``), so the project's own environment never needs them.

Transforms as GloFND's ``unimodal/train.py`` (two views per image): ``RandomResizedCrop(224,
scale=(0.08, 1))``, ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with p 0.8, ``RandomGrayscale(0.2)``,
Gaussian blur (sigma in [0.1, 2], p 1.0), ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``.
``--crop-only``: just ``RandomResizedCrop`` + ``PILToTensor`` (uint8), the part our host does.
Prints one JSON line: images, images/s (wall) and CPU-ms per image (this process and its
DataLoader workers, which are reaped at the end of the pass: RUSAGE_CHILDREN).

    python torchvision_loader.py FOLDER --workers 2 --batch 32 --batches 9 [--crop-only]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time


def view_transform(size: int, crop_only: bool):
  from PIL import ImageFilter
  from torchvision import transforms

  class Blur:
    def __call__(self, image):
      return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

  crop = transforms.RandomResizedCrop(size, scale=(0.08, 1.0))
  if crop_only:
    return transforms.Compose([crop, transforms.PILToTensor()])
  return transforms.Compose([
      crop, transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
      transforms.RandomGrayscale(p=0.2), transforms.RandomApply([Blur()], p=1.0),
      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
      transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


class TwoViews:
  def __init__(self, view):
    self.view = view

  def __call__(self, image):
    return self.view(image), self.view(image)


def cpu_s() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_pass(folder: str, size: int, batch: int, batches: int, workers: int,
              crop_only: bool) -> dict:
  """One pass of ``batches`` batches; workers start and exit inside it (their CPU is counted)."""
  import torch
  from torchvision import datasets
  dataset = datasets.ImageFolder(folder, TwoViews(view_transform(size, crop_only)))
  loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers)
  cpu, wall = cpu_s(), time.perf_counter()
  iterator = iter(loader)
  for _ in range(batches):
    next(iterator)
  del iterator  # joins the workers, so RUSAGE_CHILDREN includes them
  wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
  images = batches * batch
  return {"images": images, "images_per_s": images / wall, "cpu_ms_per_image": 1e3 * cpu / images,
          "workers": workers, "crop_only": crop_only, "note": "includes worker start-up",
          "torch": torch.__version__}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folder")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--batches", type=int, default=9)
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--crop-only", action="store_true")
  args = parser.parse_args()
  print(json.dumps(time_pass(args.folder, args.size, args.batch, args.batches, args.workers,
                             args.crop_only)))


if __name__ == "__main__":
  main()
