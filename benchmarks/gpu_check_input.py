"""gpu_check's input phases: the train step with on-device augmentation, and training from a
generated JPEG folder end to end (``benchmarks/gpu_check.py --phases augmented,jpeg_train``).

* ``augmented``: the same ResNet-50 step as the ``throughput`` phase, but fed what the real
  pipeline sends: uint8 host-cropped view pairs ``(B, 2, 224, 224, 3)``, with flip, colour
  jitter, greyscale, blur and normalisation run inside the jitted step; interleaved with the
  step on ready-made float views (no augmentation), so the ratio is the augmentation's cost.
* ``jpeg_train``: ImageNet-size JPEGs written and converted with our tools, then the real train
  step fed by ``make_iterator`` (host crops, default concurrency for this host's cores, device
  prefetch) vs the same step on one reused batch (:func:`input_pipeline.end_to_end_phase`).
"""

from __future__ import annotations

import functools
import pathlib
import tempfile
import time

import input_pipeline
import jax
import jax.numpy as jnp
import numpy as np
import step_timing

from glofnd_jax import augment, models, sharding
from glofnd_jax.training import optim
from glofnd_jax.training import step as ts


def _augmented_run(model, tx, objective, *, batch, size, num_samples, mesh):
  recipe = augment.SimCLRAugmentConfig(crop_size=size)
  config = step_timing.mode_config(objective, "glofnd")
  step = ts.make_unimodal_train_step(model, tx, config, num_samples=num_samples,
                                     global_batch=batch, mesh=mesh,
                                     augment=functools.partial(augment.two_views, config=recipe))
  state = ts.create_train_state(model, tx, np.zeros((2, size, size, 3), np.float32), config,
                                num_samples, mesh, jax.random.key(0))

  def make(key):
    images = jax.random.randint(key, (batch, 2, size, size, 3), 0, 256, jnp.int32)
    index = (jnp.arange(batch) * max(1, num_samples // batch)).astype(jnp.int32)
    return {"image": images.astype(jnp.uint8), "index": index}

  make = jax.jit(make, out_shardings=sharding.batch_sharding(mesh))
  batches = [make(k) for k in jax.random.split(jax.random.key(1), 2)]
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  run = step_timing.ModeRun(mode="glofnd+augment", step=compiled, state=state, batches=batches,
                            compile_s=time.perf_counter() - start, memory=None)
  step_timing.time_block(run, 2)
  return run


def augmented_phase(*, model_name, model_kwargs, image_size, batch, num_samples, steps, repeats,
                    objective, log) -> dict:
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = models.get_model(model_name, **model_kwargs)
  tx = optim.make_optimizer("lars", optim.scaled_lr(0.075, batch, "sqrt"), weight_decay=1e-6)
  runs = step_timing.build_modes(model, tx, objective, ["glofnd"], batch=batch,
                                 image_shape=(image_size, image_size, 3),
                                 num_samples=num_samples, mesh=mesh, progress=log)
  runs["glofnd+augment"] = _augmented_run(model, tx, objective, batch=batch, size=image_size,
                                          num_samples=num_samples, mesh=mesh)
  log(f"compiled glofnd+augment in {runs['glofnd+augment'].compile_s:.1f} s")
  step_timing.interleaved(runs, steps=steps, repeats=repeats, progress=log)
  summary = step_timing.summarize(runs, baseline="glofnd")
  for entry in summary.values():
    entry["images_per_s_median"] = batch / (entry["ms_per_step"]["median"] / 1e3)
  return {"model": model_name, "image_size": image_size, "batch": batch,
          "num_samples": num_samples, "steps_per_block": steps, "repeats": repeats,
          "baseline": "glofnd", "modes": summary}


def jpeg_train_phase(*, images, size, batch, steps, repeats, model, log) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    _, dataset = input_pipeline.prepare_dataset(pathlib.Path(tmp), images)
    log(f"wrote and converted {images} JPEGs in {time.perf_counter() - start:.0f} s")
    result = input_pipeline.end_to_end_phase(dataset, size=size, batch=batch, steps=steps,
                                             repeats=repeats, model=model, log=log)
  result["images"] = images
  return result
