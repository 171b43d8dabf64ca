"""Input pipeline cost: host CPU per training image at 224 px, and whether input bounds training.

1. Writes a folder of ImageNet-size JPEGs (about 500x400, smooth content plus noise, quality 90)
   in class subfolders and converts it with ``glofnd_jax.data.convert_folder`` (encoded files
   kept, as ``glofnd-jax convert-folder`` does).
2. Host pipeline, pinned to 1 and to 2 cores (``os.sched_setaffinity``; the concurrency defaults
   follow the pinned cores): ``make_iterator`` with ``host_crop`` (two 224 random resized crops
   per image from one decode, uint8) over the ArrayRecord file. Images/s (wall) and CPU-ms per
   image (process CPU time, all threads, / images); ``crop_views`` alone on 1 core is the floor
   under the pipeline's overhead. When ``--torch-python`` (default: this Python) imports torch
   and torchvision, the authors' DataLoader (``torchvision_loader.py``: two views of
   ``RandomResizedCrop(224) + ColorJitter + Grayscale + GaussianBlur + Flip + ToTensor +
   Normalize`` from the same JPEG folder, ``num_workers`` = cores), and the same loader with the
   crop + resize only (what our host does; the rest of ours runs on the accelerator), run in a
   subprocess pinned to the same cores, interleaved with ours; otherwise they are skipped with a
   message. Each block records the 1-minute load average (the machine may be shared).
   The cores each needs for the one-H100 ResNet-50 step rate (2,818 images/s, BENCHMARKS.md) =
   CPU-ms per image x 2.818.
3. End to end: the real jitted train step of a tiny model (small CNN, host crops at
   ``--e2e-size``, on-device augmentation) fed by the pipeline with device prefetch, vs the
   same step on one device batch reused (synthetic input: no input cost), interleaved blocks;
   the ratio real / synthetic images/s is 1 when input is not the bottleneck.

    python benchmarks/input_pipeline.py [--quick] [--images 320] [--out FILE]
        [--skip-end-to-end] [--torch-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import common
import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
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


def time_crop_views(source, *, size: int, count: int) -> dict:
  """``crop_views`` alone on ``count`` records in this thread: the pipeline's floor."""
  from glofnd_jax.data import crops
  config = crops.HostCropConfig(size=(size, size))
  records = [source[i]["image"] for i in range(min(count, len(source)))]
  cpu = time.process_time()
  for i, record in enumerate(records):
    crops.crop_views(record, np.random.default_rng((0, 0, i)), config, channels=3)
  return {"images": len(records),
          "cpu_ms_per_image": 1e3 * (time.process_time() - cpu) / len(records)}


def torch_available(torch_python: str) -> bool:
  check = subprocess.run([torch_python, "-c", "import torch, torchvision"], capture_output=True)
  return check.returncode == 0


def time_torchvision(torch_python: str, folder, *, size: int, batch: int, batches: int,
                     workers: int, crop_only: bool) -> dict:
  """The authors' DataLoader in ``torch_python`` (``torchvision_loader.py``); the child inherits
  this process's pinned cores."""
  command = [torch_python, str(HERE / "torchvision_loader.py"), str(folder), "--size", str(size),
             "--batch", str(batch), "--batches", str(batches), "--workers", str(workers)]
  done = subprocess.run(command + (["--crop-only"] if crop_only else []), capture_output=True,
                        text=True, check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(blocks: list[dict]) -> dict:
  cpu = common.spread([b["cpu_ms_per_image"] for b in blocks])
  return {"cpu_ms_per_image": cpu, "images_per_s": common.spread([b["images_per_s"] for b in blocks]),
          "blocks": blocks, "cores_for_h100_step": cpu["median"] * H100_IMAGES_PER_S / 1e3}


def time_cores(folder, source, torch_python, *, cores, size, batch, batches, repeats, log):
  """Interleaved blocks on ``cores`` pinned cores: ours, the authors' loader, its crop only."""
  arms = {"ours": lambda: time_host_pipeline(source, size=size, batch=batch, batches=batches)}
  if torch_python:
    for name, crop_only in (("torchvision", False), ("torchvision_crop_only", True)):
      arms[name] = functools.partial(time_torchvision, torch_python, folder, size=size,
                                     batch=batch, batches=batches, workers=cores,
                                     crop_only=crop_only)
  runs = {name: [] for name in arms}
  for _ in range(repeats):
    for name, arm in arms.items():
      runs[name].append(arm() | {"load_average_1min": os.getloadavg()[0]})
  entry = {name: summarise(blocks) for name, blocks in runs.items()}
  for name, result in entry.items():
    log(f"{cores} core(s) {name}: {result['images_per_s']['median']:.0f} images/s, "
        f"{result['cpu_ms_per_image']['median']:.2f} CPU-ms/image")
  for name in set(entry) - {"ours"}:
    entry[f"{name}_over_ours_cpu_ms"] = (entry[name]["cpu_ms_per_image"]["median"]
                                         / entry["ours"]["cpu_ms_per_image"]["median"])
  return entry


def host_phase(folder, source, *, torch_python, cores_list, size, batch, batches, repeats,
               log) -> dict:
  if torch_python and not torch_available(torch_python):
    log(f"torch/torchvision not importable by {torch_python}: the torchvision DataLoader "
        "comparison is skipped (give --torch-python a Python that has them)")
    torch_python = None
  original = os.sched_getaffinity(0)
  results = {}
  try:
    for cores in cores_list:
      if cores > len(original):
        log(f"{cores} cores requested but only {len(original)} available: skipped")
        continue
      os.sched_setaffinity(0, set(sorted(original)[:cores]))
      results[f"{cores}_cores"] = time_cores(folder, source, torch_python, cores=cores, size=size,
                                             batch=batch, batches=batches, repeats=repeats,
                                             log=log)
    os.sched_setaffinity(0, set(sorted(original)[:1]))
    alone = time_crop_views(source, size=size, count=batch * batches)
    log(f"crop_views alone, 1 core: {alone['cpu_ms_per_image']:.2f} CPU-ms/image")
  finally:
    os.sched_setaffinity(0, original)
  return {"torchvision": "measured" if torch_python else "skipped: torch not importable",
          "torch_python": torch_python, "image_size": size, "batch": batch,
          "batches_per_block": batches, "repeats": repeats, "by_cores": results,
          "crop_views_alone_1_core": alone}


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
  parser.add_argument("--torch-python", default=sys.executable,
                      help="a Python with torch + torchvision for the authors' DataLoader arm "
                      "(default: this one; skipped with a message when they do not import)")
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
            "command": " ".join(["python benchmarks/input_pipeline.py", *(argv or sys.argv[1:])]),
            "images": images, "h100_step_images_per_s": H100_IMAGES_PER_S}
  with tempfile.TemporaryDirectory() as tmp:
    folder, dataset = prepare_dataset(pathlib.Path(tmp), images)
    log(f"wrote and converted {images} JPEGs; load average {os.getloadavg()}")
    source = data.ArrayRecordImageSource(dataset, "train")
    report["host"] = host_phase(folder, source, torch_python=args.torch_python, log=log,
                                **host)
    if e2e is not None:
      report["end_to_end"] = end_to_end_phase(dataset, log=log, **e2e)
  report["wall_s"] = time.time() - started
  out = common.write_json(report, common.output_path(args.out, "input_pipeline", args.quick))
  print(f"wrote {out}\ncommand: {report['command']}")
  return report


if __name__ == "__main__":
  main()
