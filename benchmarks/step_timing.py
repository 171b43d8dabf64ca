"""Time the real jitted unimodal train step for several detection modes, interleaved.

Used by ``overhead.py`` (CPU) and ``gpu_check.py`` (one GPU). Each mode gets its own compiled
step (:func:`glofnd_jax.training.step.make_unimodal_train_step`, state donated) and its own train
state, built from the *same* model, optimiser, batch and random input data, so the only
difference between the programs is the detection (and the threshold state it carries).

Timing is interleaved: every repeat runs one block of ``steps`` steps of each mode, and the order
of the modes alternates between repeats (A B, B A, A B, ...) so that slow drifts of a shared
machine's load hit every mode alike. The overhead of a mode is reported per repeat as its block
time over the baseline's block time of the *same* repeat, then summarised over repeats.

Two clocks: wall time, and this process's CPU time (all its threads) over the block. On a
CPU shared with other processes the wall time of a step swings with their load, while the CPU
time the step consumes does not wait on them; both ratios are reported. On a GPU only the wall
time means anything (the host mostly waits).

Only jax, flax, optax and the package's core modules are imported, so this runs on a GPU image
without the data-pipeline dependencies.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

from glofnd_jax import objectives, sharding
from glofnd_jax.training import step as ts

WITH_QUANTILE_METRIC = "+qmetric"


def mode_config(objective: objectives.UnimodalConfig, mode: str) -> objectives.UnimodalConfig:
  """``objective`` with detection ``mode``; a name ending in ``+qmetric`` (``glofnd+qmetric``)
  also turns on the optional ``batch_quantile_mean`` metric (a ``top_k`` of the similarity rows
  every step), to measure what that diagnostic costs on top of the method."""
  return dataclasses.replace(objective, mode=mode.removesuffix(WITH_QUANTILE_METRIC),
                             quantile_metric=mode.endswith(WITH_QUANTILE_METRIC))


@dataclasses.dataclass
class ModeRun:
  """One compiled step with its own state and batches; ``times`` holds each block's ms/step."""

  mode: str
  step: Callable
  state: Any
  batches: list
  compile_s: float
  memory: dict | None = None
  times: list = dataclasses.field(default_factory=list)
  cpu_times: list = dataclasses.field(default_factory=list)


def random_batches(key, *, batch: int, image_shape: Sequence[int], num_samples: int, mesh,
                   count: int = 2, dtype=jnp.float32) -> list[dict]:
  """``count`` batches of random two-view images and distinct indices, made on the devices."""
  if batch > num_samples:
    raise ValueError(f"batch {batch} is larger than num_samples {num_samples}.")
  batch_sharding = sharding.batch_sharding(mesh)
  stride = max(1, num_samples // batch)

  def make(key):
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (batch, *image_shape)
    # Distinct indices spread over the whole range (every shard of the state is touched), with
    # no O(N) permutation, so N = 1e8 costs nothing here.
    offset = jax.random.randint(k3, (), 0, num_samples)
    index = ((offset + jnp.arange(batch) * stride) % num_samples).astype(jnp.int32)
    return {"view1": jax.random.normal(k1, shape, dtype),
            "view2": jax.random.normal(k2, shape, dtype), "index": index}

  make = jax.jit(make, out_shardings=batch_sharding)
  return [make(k) for k in jax.random.split(key, count)]


def _memory_analysis(compiled) -> dict | None:
  """The compiled step's buffer sizes in bytes, where the backend reports them."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - optional information; not every backend implements it
    return None
  if analysis is None:
    return None
  names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "alias_size_in_bytes", "generated_code_size_in_bytes")
  return {name: int(getattr(analysis, name)) for name in names if hasattr(analysis, name)}


def build_step(model, tx: optax.GradientTransformation, objective: objectives.UnimodalConfig,
               mode: str, *, batch: int, image_shape: Sequence[int], num_samples: int, mesh,
               seed: int = 0, warmup_steps: int = 2,
               batches: list[dict] | None = None) -> ModeRun:
  """Compile (ahead of time) and warm up the step of ``mode`` with a fresh train state.

  ``objective`` is the template, used with ``mode`` replaced (see :func:`mode_config`). Thresholds should start
  at epoch 0 (``start_update = start_mask = 0``) so that the detection is active in every timed
  step. ``batches`` default to :func:`random_batches` for ``num_samples``.
  """
  if batches is None:
    batches = random_batches(jax.random.key(seed + 1), batch=batch, image_shape=image_shape,
                             num_samples=num_samples, mesh=mesh)
  config = mode_config(objective, mode)
  step = ts.make_unimodal_train_step(model, tx, config, num_samples=num_samples,
                                     global_batch=batch, mesh=mesh)
  state = ts.create_train_state(model, tx, np.zeros((2, *image_shape), np.float32), config,
                                num_samples, mesh, jax.random.key(seed))
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  run = ModeRun(mode=mode, step=compiled, state=state, batches=batches,
                compile_s=time.perf_counter() - start, memory=_memory_analysis(compiled))
  time_block(run, warmup_steps)  # first executions: allocation, autotuning
  return run


def build_objective_step(objective: objectives.UnimodalConfig, mode: str, *, batch: int,
                         dim: int, num_samples: int, seed: int = 0,
                         warmup_steps: int = 2) -> ModeRun:
  """The detection + loss alone: ``value_and_grad`` of the objective w.r.t. ``(B, dim)`` features.

  What a train step adds to the network's forward and backward pass, timed without the network
  (per-sample state donated, one device). Same mode names as :func:`build_step`.
  """
  config = mode_config(objective, mode)
  epoch = max(config.thresholds.start_update, config.thresholds.start_mask)

  def step(state, batch_features):
    def loss(h1, h2):
      return objectives.unimodal_objective(h1, h2, batch_features["index"], state, epoch, config)
    (value, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        batch_features["view1"], batch_features["view2"])
    # The metrics are returned as the train step returns them (else XLA drops their work).
    return aux.state, {"loss": value, "grads": grads, **aux.metrics}

  key1, key2 = jax.random.split(jax.random.key(seed + 1))
  batches = []
  for key in (key1, key2):
    k1, k2, k3 = jax.random.split(key, 3)
    batches.append({"view1": jax.random.normal(k1, (batch, dim)),
                    "view2": jax.random.normal(k2, (batch, dim)),
                    "index": jax.random.choice(k3, num_samples, (batch,), replace=False)})
  state = objectives.init_unimodal_state(num_samples, config)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, batches[0]).compile()
  run = ModeRun(mode=mode, step=compiled, state=state, batches=batches,
                compile_s=time.perf_counter() - start)
  time_block(run, warmup_steps)
  return run


def build_modes(model, tx: optax.GradientTransformation, objective: objectives.UnimodalConfig,
                modes: Sequence[str], *, batch: int, image_shape: Sequence[int], num_samples: int,
                mesh, seed: int = 0, warmup_steps: int = 2,
                progress: Callable[[str], None] | None = None) -> dict:
  """:func:`build_step` for every mode, all on the same random batches: ``{mode: ModeRun}``."""
  batches = random_batches(jax.random.key(seed + 1), batch=batch, image_shape=image_shape,
                           num_samples=num_samples, mesh=mesh)
  runs = {}
  for mode in modes:
    runs[mode] = build_step(model, tx, objective, mode, batch=batch, image_shape=image_shape,
                            num_samples=num_samples, mesh=mesh, seed=seed,
                            warmup_steps=warmup_steps, batches=batches)
    if progress:
      progress(f"compiled {mode} in {runs[mode].compile_s:.1f} s")
  return runs


def time_block(run: ModeRun, steps: int) -> tuple[float, float]:
  """Wall and process-CPU milliseconds per step over ``steps`` steps (waits for the last)."""
  state = run.state
  start, cpu_start = time.perf_counter(), time.process_time()
  for i in range(steps):
    state, metrics = run.step(state, run.batches[i % len(run.batches)])
  jax.block_until_ready((state, metrics))
  run.state = state
  return ((time.perf_counter() - start) / steps * 1e3,
          (time.process_time() - cpu_start) / steps * 1e3)


def interleaved(runs: dict, *, steps: int, repeats: int,
                progress: Callable[[str], None] | None = None) -> None:
  """Fill every run's ``times`` with ``repeats`` blocks, modes alternating order each repeat."""
  order = list(runs)
  for r in range(repeats):
    for mode in (order if r % 2 == 0 else order[::-1]):
      wall, cpu = time_block(runs[mode], steps)
      runs[mode].times.append(wall)
      runs[mode].cpu_times.append(cpu)
    if progress:
      progress(f"repeat {r + 1}/{repeats}: " + ", ".join(
          f"{m} {runs[m].times[-1]:.1f} ms" for m in order))


def summarize(runs: dict, baseline: str) -> dict:
  """Per run: ms/step spread and the per-repeat ratio to ``baseline`` (median, IQR, min, max),
  for wall time and (``cpu_`` keys) process CPU time."""
  out = {}
  for mode, run in runs.items():
    ratios = [t / b for t, b in zip(run.times, runs[baseline].times)]
    cpu_ratios = [t / b for t, b in zip(run.cpu_times, runs[baseline].cpu_times) if b > 0]
    out[mode] = {"ms_per_step": common.spread(run.times), "compile_s": run.compile_s,
                 "ratio_to_" + baseline: common.spread(ratios), "ratios": ratios,
                 "times_ms": run.times,
                 "cpu_ms_per_step": common.spread(run.cpu_times),
                 "cpu_ratio_to_" + baseline: common.spread(cpu_ratios) if cpu_ratios else None,
                 "cpu_times_ms": run.cpu_times, "compiled_memory_bytes": run.memory}
  return out
