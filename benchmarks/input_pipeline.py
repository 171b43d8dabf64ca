"""Input pipeline cost: host CPU per training image at 224 px, and whether input bounds training.

1. Writes a folder of ImageNet-size JPEGs (about 500x400, smooth content plus noise, quality 90)
   in class subfolders and converts it with ``glofnd_jax.data.convert_folder`` (encoded files
   kept, as ``glofnd-jax convert-folder`` does).
2. Host pipeline, pinned to 1 and to 2 cores (``os.sched_setaffinity``; the concurrency defaults
   follow the pinned cores): ``make_iterator`` with ``host_crop`` (two 224 random resized crops
   per image from one decode, uint8) over the ArrayRecord file. Images/s (wall) and CPU-ms per
   image (process CPU time, all threads, / images). When torch and torchvision import, the
   authors' DataLoader (two views of ``RandomResizedCrop(224) + ColorJitter + Grayscale +
   GaussianBlur + Flip + ToTensor + Normalize`` from the same JPEG folder, ``num_workers`` =
   cores) is timed the same way, interleaved with ours; otherwise it is skipped with a message.
   The cores each needs for the one-H100 ResNet-50 step rate (2,818 images/s, BENCHMARKS.md) =
   CPU-ms per image x 2.818.
3. End to end: the real jitted train step of a tiny model (small CNN, host crops at
   ``--e2e-size``, on-device augmentation) fed by the pipeline with device prefetch, vs the
   same step on one device batch reused (synthetic input: no input cost), interleaved blocks;
   the ratio real / synthetic images/s is 1 when input is not the bottleneck.

    python benchmarks/input_pipeline.py [--quick] [--images 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import common
import numpy as np
from PIL import Image

H100_IMAGES_PER_S = 2818  # ResNet-50 SogCLR + GloFND step, batch 256, bf16 (BENCHMARKS.md)


def write_jpeg_folder(root: pathlib.Path, count: int, classes: int = 4, seed: int = 0) -> None:
  """``count`` JPEGs of about 500x400 in ``classes`` subfolders of ``root``."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    width, height = int(rng.integers(450, 531)), int(rng.integers(360, 481))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(0.005, 0.05, 3)
    base = 127 + 100 * np.sin(freq[None, None] * (xx[..., None] + yy[..., None] * 0.7) + phase)
    pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    folder = root / f"class_{i % classes}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", format="JPEG", quality=90)


def time_host_pipeline(source, *, size: int, batch: int, batches: int) -> dict:
  from glofnd_jax import data
  from glofnd_jax.data import crops
  iterator = data.make_iterator(source, global_batch_size=batch, seed=0, channels=3,
                                host_crop=crops.HostCropConfig(size=(size, size)),
                                process_index=0, process_count=1)
  next(iterator)  # threads started, first batch (warm-up) out of the measurement
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  iterator.close()
  images = batches * batch
  return {"images": images, "images_per_s": images / wall, "cpu_ms_per_image": 1e3 * cpu / images,
          "read_threads": iterator.read_options.num_threads, "workers": iterator.worker_count}


def torchvision_loader(folder: pathlib.Path, size: int, batch: int, workers: int):
  """The authors' transform (GloFND ``unimodal/train.py``), two views per image."""
  import torch
  from torchvision import datasets, transforms
  from PIL import ImageFilter

  class Blur:
    def __call__(self, image):
      return image.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))

  view = transforms.Compose([
      transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
      transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
      transforms.RandomGrayscale(p=0.2), transforms.RandomApply([Blur()], p=1.0),
      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
      transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
  dataset = datasets.ImageFolder(str(folder), lambda image: (view(image), view(image)))
  return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                     num_workers=workers, persistent_workers=workers > 0)


def process_tree_cpu_s() -> float:
  """CPU seconds of this process and its (reaped and live) children: DataLoader workers."""
  own = time.process_time()
  try:
    import resource
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own += children.ru_utime + children.ru_stime
  except ImportError:
    pass
  return own


def time_torchvision(loader, batches: int, batch: int) -> dict:
  # Workers are fresh processes each epoch pass (not persistent across iter() here), so their
  # CPU shows up in RUSAGE_CHILDREN once they exit: time a whole pass of `batches`.
  cpu, wall = process_tree_cpu_s(), time.perf_counter()
  iterator = iter(loader)
  for _ in range(batches):
    next(iterator)
  del iterator
  wall = time.perf_counter() - wall
  cpu = process_tree_cpu_s() - cpu
  images = batches * batch
  return {"images": images, "images_per_s": images / wall, "cpu_ms_per_image": 1e3 * cpu / images,
          "note": "includes loader start-up"}


def host_phase(folder, source, *, cores_list, size, batch, batches, repeats, log) -> dict:
  try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    have_torch = True
  except ImportError:
    have_torch = False
    log("torch/torchvision not importable: the torchvision DataLoader comparison is skipped "
        "(pip install torch torchvision to include it)")
  original = os.sched_getaffinity(0)
  results = {}
  try:
    for cores in cores_list:
      if cores > len(original):
        log(f"{cores} cores requested but only {len(original)} available: skipped")
        continue
      os.sched_setaffinity(0, set(sorted(original)[:cores]))
      runs = {"ours": []} | ({"torchvision": []} if have_torch else {})
      for _ in range(repeats):  # interleaved: ours, theirs, ours, theirs, ...
        runs["ours"].append(time_host_pipeline(source, size=size, batch=batch, batches=batches))
        if have_torch:
          loader = torchvision_loader(folder, size, batch, workers=cores)
          runs["torchvision"].append(time_torchvision(loader, batches, batch))
      entry = {}
      for name, blocks in runs.items():
        cpu = common.spread([b["cpu_ms_per_image"] for b in blocks])
        rate = common.spread([b["images_per_s"] for b in blocks])
        entry[name] = {"cpu_ms_per_image": cpu, "images_per_s": rate, "blocks": blocks,
                       "cores_for_h100_step": cpu["median"] * H100_IMAGES_PER_S / 1e3}
        log(f"{cores} core(s) {name}: {rate['median']:.0f} images/s, "
            f"{cpu['median']:.2f} CPU-ms/image")
      if have_torch:
        entry["torchvision_over_ours_cpu_ms"] = (entry["torchvision"]["cpu_ms_per_image"]["median"]
                                                 / entry["ours"]["cpu_ms_per_image"]["median"])
      results[f"{cores}_cores"] = entry
  finally:
    os.sched_setaffinity(0, original)
  return {"torchvision": "measured" if have_torch else "skipped: torch not importable",
          "image_size": size, "batch": batch, "batches_per_block": batches, "repeats": repeats,
          "by_cores": results}


def end_to_end_config(data_dir: str, size: int, batch: int, model: dict | None = None):
  """A unimodal config training on our converted JPEG folder with host crops; ``model``
  overrides ``config.model`` (default the small CNN)."""
  from glofnd_jax.config import unimodal as unimodal_config
  c = unimodal_config.base_config()
  c.data.name, c.data.data_dir, c.data.val_split = "arrayrecord", data_dir, ""
  c.data.image_size, c.data.channels, c.data.host_crop = size, 3, True
  c.augment.kind, c.augment.crop_size = "simclr", size
  c.model.name, c.batch_size, c.epochs = "small_cnn", batch, 1000
  c.model.update(model or {})
  c.glofnd.mode, c.glofnd.start_update_epoch, c.glofnd.start_mask_epoch = "glofnd", 0, 0
  return c


def end_to_end_phase(data_dir, *, size, batch, steps, repeats, log, model=None) -> dict:
  """Train-step images/s fed by the real pipeline vs by one reused device batch."""
  import jax
  from glofnd_jax.data.iterators import DevicePrefetch
  from glofnd_jax.training import task as task_lib
  with tempfile.TemporaryDirectory() as workdir:
    config = end_to_end_config(str(data_dir), size, batch, model)
    run = task_lib.build_run(config, pathlib.Path(workdir))
    step_fn, state = run.step_fn(), run.init_state()
    batches = DevicePrefetch(run.iterator(), run.global_batch)
    fixed = next(batches)
    state, metrics = step_fn(state, fixed)  # compile
    jax.block_until_ready(metrics)
    times = {"real": [], "synthetic": []}
    for _ in range(repeats):
      for name in times:
        start = time.perf_counter()
        for _ in range(steps):
          state, metrics = step_fn(state, next(batches) if name == "real" else fixed)
        jax.block_until_ready(metrics)
        times[name].append(batch * steps / (time.perf_counter() - start))
    batches.close()
  result = {name: common.spread(values) for name, values in times.items()}
  ratios = [r / s for r, s in zip(times["real"], times["synthetic"])]
  result.update(real_over_synthetic=common.spread(ratios), size=size, batch=batch,
                steps_per_block=steps, repeats=repeats, model=config.model.to_dict(),
                cores=len(os.sched_getaffinity(0)))
  log(f"end to end: real {result['real']['median']:.0f} images/s, synthetic "
      f"{result['synthetic']['median']:.0f}, ratio {result['real_over_synthetic']['median']:.2f}")
  return result


def prepare_dataset(root: pathlib.Path, count: int) -> tuple[pathlib.Path, pathlib.Path]:
  from glofnd_jax import data
  folder, dataset = root / "jpegs", root / "dataset"
  write_jpeg_folder(folder, count)
  data.convert_folder(folder, dataset)
  return folder, dataset


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
  parser.add_argument("--images", type=int, default=320)
  parser.add_argument("--skip-end-to-end", action="store_true")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  started = time.time()
  log = lambda line: print(f"[input_pipeline {time.time() - started:5.0f} s] {line}", flush=True)
  if args.quick:
    images, host = 16, dict(size=224, batch=4, batches=2, repeats=1, cores_list=(1,))
    e2e = None
  else:
    images = args.images
    host = dict(size=224, batch=32, batches=images // 32 - 1, repeats=3, cores_list=(1, 2))
    e2e = None if args.skip_end_to_end else dict(size=64, batch=32, steps=8, repeats=3)
  from glofnd_jax import data
  report = {"benchmark": "input_pipeline", "quick": args.quick, "machine": common.machine(),
            "command": "python benchmarks/input_pipeline.py" + (" --quick" if args.quick else ""),
            "images": images, "h100_step_images_per_s": H100_IMAGES_PER_S}
  with tempfile.TemporaryDirectory() as tmp:
    folder, dataset = prepare_dataset(pathlib.Path(tmp), images)
    log(f"wrote and converted {images} JPEGs")
    source = data.ArrayRecordImageSource(dataset, "train")
    report["host"] = host_phase(folder, source, log=log, **host)
    if e2e is not None:
      report["end_to_end"] = end_to_end_phase(dataset, log=log, **e2e)
  report["wall_s"] = time.time() - started
  out = common.write_json(report, common.output_path(args.out, "input_pipeline", args.quick))
  print(f"wrote {out}\ncommand: {report['command']}")
  return report


if __name__ == "__main__":
  main()
