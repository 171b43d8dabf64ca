"""How well thresholds track each anchor's exact dataset-wide (1 - alpha) similarity quantile.

For every anchor i the reference is ``exact_i``: the (1 - alpha) quantile of i's similarities to
all other samples of the dataset (:func:`glofnd_jax.evaluation.dataset_quantile`). Compared:

* **GloFND**: the learned ``lambda_i`` after training.
* **FND (mini-batch)**: the (1 - alpha) quantile of i's negatives in one mini-batch
  (:func:`glofnd_jax.thresholds.batch_quantile`, what the FND baseline masks with), for batches
  drawn as in training (random permutations, batch B, remainder dropped; several epochs, so each
  anchor contributes several estimates and the error is the mean over (anchor, batch) pairs).

Two settings:

1. ``digits``: a real training run of the default config (``configs/digits_sogclr_glofnd.py``,
   GloFND, seed 0, trained here with the library's run class and step). The exact quantile is
   over the trained encoder's projections of the un-augmented training images (as
   ``glofnd-jax eval``'s lambda error). GloFND's lambda was learned on augmented views in train
   mode, so its error includes that gap. FND is shown both *as in training* (two augmented views
   through the network in train mode, 2B - 2 negatives per row, the two rows averaged) -- the
   like-for-like comparison -- and on the *un-augmented* projections (B - 1 negatives; pure
   sampling error, no augmentation gap).
2. ``synthetic``: fixed embeddings (no training): N points around K cluster centres on the unit
   sphere in d dimensions, one view per sample. GloFND's update runs on random mini-batches for
   E epochs (the library's threshold step, jitted ``lax.scan`` per epoch); FND uses the same
   batches. This isolates the estimators from a moving encoder.

Writes ``benchmarks/results/quantile_tracking.json`` and ``quantile_tracking.png``.

``--batch-sweep 32,64,128,256,512`` instead runs only the synthetic setting once per batch size
(same data, epochs and seed), to show how each estimator's error depends on B: FND's estimate
comes from one batch, GloFND's lambda from one update per epoch whatever B is. Writes
``quantile_tracking_batch_sweep.json`` and ``.png``.

    python benchmarks/quantile_tracking.py [--quick] [--skip-digits] [--batch-sweep B,...]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import tempfile
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import data
from glofnd_jax import similarity as sim
from glofnd_jax import thresholds as thr
from glofnd_jax.config.common import load_config_file
from glofnd_jax.evaluation import dataset_quantile, lambda_error
from glofnd_jax.evaluation import unimodal as unimodal_eval
from glofnd_jax.training import task as task_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_sogclr_glofnd.py"


def errors(estimate, exact) -> dict:
  """``lambda_error``'s summary plus quartiles of the absolute error."""
  summary = lambda_error(estimate, exact)
  absolute = np.abs(np.asarray(estimate, np.float64) - np.asarray(exact, np.float64))
  summary["abs_error_q1"], summary["abs_error_q3"] = (float(v) for v in
                                                      np.quantile(absolute, [0.25, 0.75]))
  return summary


def epoch_batches(rng: np.random.Generator, num_samples: int, batch: int, epochs: int):
  """``(epochs * N // B, B)`` indices: one permutation per epoch, remainder dropped."""
  steps = num_samples // batch
  return np.concatenate([rng.permutation(num_samples)[:steps * batch].reshape(steps, batch)
                         for _ in range(epochs)])


# ------------------------------------------------------------------------------------ digits

def load_config():
  return load_config_file(CONFIG)


def train_digits(workdir: pathlib.Path, epochs: int | None, start: int | None):
  """Train the default digits run; returns ``(run, final state)``.

  Uses the run-class interface the train loop uses (``init_state``, ``iterator``, ``step_fn``,
  ``global_batch``): the same data order, step and seeds as ``glofnd-jax train``, without the
  loop's logging and checkpoints (nothing to restore, so nothing is cached).
  """
  config = load_config()
  config.seed = 0
  if epochs is not None:
    config.epochs = epochs
    config.optim.warmup_epochs = min(config.optim.warmup_epochs, epochs - 1)
  if start is not None:
    config.glofnd.start_update_epoch = config.glofnd.start_mask_epoch = start
  workdir.mkdir(parents=True, exist_ok=True)
  run = task_lib.build_run(config, workdir)
  state, iterator, step = run.init_state(), run.iterator(), run.step_fn()
  for _ in range(run.total_steps):
    state, metrics = step(state, run.global_batch(next(iterator)))
  if not np.isfinite(float(metrics["loss"])):
    raise FloatingPointError("digits training diverged")
  return run, state


def raw_images(run) -> np.ndarray:
  """Every training image as the loader yields it, in index order."""
  c = run.config
  iterator = data.make_iterator(run.source, global_batch_size=256, shuffle=False,
                                drop_remainder=False, num_epochs=1, image_size=c.data.image_size,
                                channels=c.data.channels, process_index=0, process_count=1)
  images, index = [], []
  for batch in iterator:
    keep = batch["index"] >= 0
    images.append(batch["image"][keep])
    index.append(batch["index"][keep])
  return np.concatenate(images)[np.argsort(np.concatenate(index))]


def digits_setting(workdir: pathlib.Path, *, epochs: int | None, start: int | None,
                   fnd_epochs: int, seed: int, log) -> tuple[dict, dict]:
  began = time.time()
  run, state = train_digits(workdir, epochs, start)
  log(f"digits: trained in {time.time() - began:.0f} s")
  c = run.config
  alpha, batch, n = c.glofnd.alpha, run.batch, run.num_samples
  _, projections, _ = unimodal_eval.run_features(run, state, run.source)  # eval mode, un-augmented
  exact = dataset_quantile(projections, alpha)
  lam = np.asarray(jax.device_get(state.per_sample.thresholds[0].lam))[:n]

  variables = {"params": state.params, "batch_stats": state.batch_stats}

  @jax.jit
  def fnd_as_trained(key, images):
    """Mini-batch quantile of two augmented views' projections in train mode, as the step."""
    view_key, k1, k2 = jax.random.split(key, 3)
    view1, view2 = augment_lib.two_views(view_key, images, run.augment)
    embed = lambda views, k: run.model.apply(variables, views, train=True,
                                             mutable=["batch_stats"], rngs={"dropout": k})[0]
    sims = sim.unimodal_similarities(sim.l2_normalize(embed(view1, k1)),
                                     sim.l2_normalize(embed(view2, k2)))
    return thr.batch_quantile(sims, sim.unimodal_negatives(images.shape[0]), 1.0 - alpha)

  @jax.jit
  def fnd_unaugmented(z):
    sims = sim.cosine(z, z)[None]
    negatives = ~jnp.eye(z.shape[0], dtype=bool)[None]
    return thr.batch_quantile(sims, negatives, 1.0 - alpha)

  images = raw_images(run)
  z = np.asarray(sim.l2_normalize(jnp.asarray(projections)))
  batches = epoch_batches(np.random.default_rng(seed), n, batch, fnd_epochs)
  keys = jax.random.split(jax.random.key(seed), len(batches))
  trained, plain = [], []
  for key, index in zip(keys, batches):
    trained.append(np.asarray(fnd_as_trained(key, jnp.asarray(images[index]))))
    plain.append(np.asarray(fnd_unaugmented(jnp.asarray(z[index]))))
  flat = batches.reshape(-1)
  trained, plain = np.concatenate(trained), np.concatenate(plain)
  result = {
      "setting": "digits: trained default config (GloFND), exact quantile over un-augmented "
                 "train projections",
      "num_samples": n, "batch": batch, "alpha": alpha, "epochs": c.epochs,
      "start_epoch": c.glofnd.start_update_epoch, "fnd_epochs_drawn": fnd_epochs,
      "exact_quantile_mean": float(np.mean(exact)),
      "glofnd": errors(lam, exact),
      "fnd_as_in_training": errors(trained, exact[flat]),
      "fnd_unaugmented": errors(plain, exact[flat]),
      "wall_s": time.time() - began}
  arrays = {"glofnd": lam - exact, "fnd_as_in_training": trained - exact[flat],
            "fnd_unaugmented": plain - exact[flat], "lam": lam, "exact": exact}
  return result, arrays


# --------------------------------------------------------------------------------- synthetic

def clustered_embeddings(rng, num_samples: int, dim: int, clusters: int, spread: float):
  centers = rng.normal(size=(clusters, dim))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  z = centers[rng.integers(0, clusters, num_samples)] + spread * rng.normal(
      size=(num_samples, dim)) / np.sqrt(dim)
  return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def synthetic_setting(*, num_samples: int, dim: int, clusters: int, spread: float, batch: int,
                      epochs: int, alpha: float, lr: float, seed: int, log) -> tuple[dict, dict]:
  began = time.time()
  rng = np.random.default_rng(seed)
  z = clustered_embeddings(rng, num_samples, dim, clusters, spread)
  exact = dataset_quantile(z, alpha, normalize=False)
  config = thr.ThresholdConfig(alpha=alpha, lr=lr, start_update=0, start_mask=0)
  z_dev = jnp.asarray(z)
  negatives = ~jnp.eye(batch, dtype=bool)[None]

  def step(carry, index):
    state, epoch = carry
    rows = z_dev[index]
    sims = sim.cosine(rows, rows)[None]  # (1, B, B): one view per sample
    state, _ = thr.update_thresholds(state, sims, negatives, index, epoch, config)
    return (state, epoch), thr.batch_quantile(sims, negatives, 1.0 - alpha)

  @jax.jit
  def run_epoch(state, epoch, batches):
    (state, _), fnd = jax.lax.scan(step, (state, epoch), batches)
    return state, fnd

  state = thr.init_thresholds(num_samples, config)
  curve, fnd_all, index_all = [], [], []
  for epoch in range(epochs):
    batches = epoch_batches(rng, num_samples, batch, 1)
    state, fnd = run_epoch(state, jnp.int32(epoch), jnp.asarray(batches, jnp.int32))
    lam = np.asarray(state.lam)
    curve.append(float(np.mean(np.abs(lam - exact))))
    fnd_all.append(np.asarray(fnd).reshape(-1))
    index_all.append(batches.reshape(-1))
  fnd, flat = np.concatenate(fnd_all), np.concatenate(index_all)
  log(f"synthetic: {epochs} epochs in {time.time() - began:.0f} s")
  result = {
      "setting": "synthetic: fixed clustered embeddings (no training), one view per sample",
      "num_samples": num_samples, "dim": dim, "clusters": clusters, "spread": spread,
      "batch": batch, "epochs": epochs, "alpha": alpha, "glofnd_lr": lr,
      "exact_quantile_mean": float(np.mean(exact)),
      "glofnd": errors(lam, exact),
      "fnd": errors(fnd, exact[flat]),
      "glofnd_mae_by_epoch": curve,
      "glofnd_mae_last10_epochs": {"mean": float(np.mean(curve[-10:])),
                                   "min": float(np.min(curve[-10:])),
                                   "max": float(np.max(curve[-10:]))},
      "wall_s": time.time() - began}
  arrays = {"glofnd": lam - exact, "fnd": fnd - exact[flat], "curve": curve}
  return result, arrays


# ------------------------------------------------------------------------------------- plot

def plot(digits: dict | None, synthetic: dict, report: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = 3 if digits is not None else 2
  fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6))
  axes = list(axes)
  if digits is not None:
    ax = axes.pop(0)
    bins = np.linspace(-0.5, 0.5, 81)
    for name, label in (("glofnd", "GloFND lambda"), ("fnd_as_in_training", "FND, as in training"),
                        ("fnd_unaugmented", "FND, un-augmented")):
      mae = report["digits"][name]["mean_abs_error"]
      ax.hist(np.clip(digits[name], -0.5, 0.5), bins=bins, histtype="step", density=True,
              label=f"{label} (MAE {mae:.3f})")
    ax.set_title(f"digits (trained), alpha={report['digits']['alpha']:g}", fontsize=9)
    ax.set_xlabel("estimate - exact dataset quantile")
    ax.legend(fontsize=7)
  ax = axes.pop(0)
  bins = np.linspace(-0.3, 0.3, 81)
  for name, label in (("glofnd", "GloFND lambda"), ("fnd", "FND mini-batch")):
    mae = report["synthetic"][name]["mean_abs_error"]
    ax.hist(np.clip(synthetic[name], -0.3, 0.3), bins=bins, histtype="step", density=True,
            label=f"{label} (MAE {mae:.3f})")
  ax.set_title(f"synthetic clustered (fixed), alpha={report['synthetic']['alpha']:g}",
               fontsize=9)
  ax.set_xlabel("estimate - exact dataset quantile")
  ax.legend(fontsize=7)
  ax = axes.pop(0)
  epochs = np.arange(1, len(synthetic["curve"]) + 1)
  ax.plot(epochs, synthetic["curve"], label="GloFND lambda")
  ax.axhline(report["synthetic"]["fnd"]["mean_abs_error"], color="C1", ls="--",
             label="FND mini-batch")
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("mean |estimate - exact|")
  ax.set_title("synthetic: error during training", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def batch_sweep(batches, synthetic_kwargs: dict, *, seed: int, out: pathlib.Path, log) -> dict:
  """The synthetic setting once per batch size; error of each estimator vs B (table + plot)."""
  started = time.time()
  rows = []
  for batch in batches:
    result, _ = synthetic_setting(seed=seed, log=log, **{**synthetic_kwargs, "batch": batch})
    rows.append({"batch": batch, "negatives_per_anchor": batch - 1,
                 "glofnd": result["glofnd"], "fnd": result["fnd"],
                 "glofnd_mae_last10_epochs": result["glofnd_mae_last10_epochs"],
                 "fnd_over_glofnd_mae": (result["fnd"]["mean_abs_error"]
                                         / result["glofnd"]["mean_abs_error"])})
  report = {"benchmark": "quantile_tracking_batch_sweep", "machine": common.machine(),
            "setting": {k: v for k, v in synthetic_kwargs.items() if k != "batch"},
            "seed": seed, "rows": rows, "wall_s": time.time() - started}
  common.write_json(report, out)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.8, 3.6))
  sizes = [r["batch"] for r in rows]
  ax.plot(sizes, [r["glofnd"]["mean_abs_error"] for r in rows], "o-", label="GloFND lambda")
  ax.plot(sizes, [r["fnd"]["mean_abs_error"] for r in rows], "s--", label="FND mini-batch")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size B")
  ax.set_ylabel("mean |estimate - exact quantile|")
  ax.set_title(f"synthetic clustered, alpha={synthetic_kwargs['alpha']:g}, "
               f"{synthetic_kwargs['epochs']} epochs", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out.with_suffix(".png"), dpi=110)
  plt.close(fig)

  print(common.markdown_table(
      ["batch", "GloFND lambda MAE", "GloFND MAE, last 10 epochs (min-max)", "FND mini-batch MAE",
       "FND / GloFND"],
      [[r["batch"], f"{r['glofnd']['mean_abs_error']:.4f}",
        f"{r['glofnd_mae_last10_epochs']['min']:.4f}-{r['glofnd_mae_last10_epochs']['max']:.4f}",
        f"{r['fnd']['mean_abs_error']:.4f}", f"{r['fnd_over_glofnd_mae']:.2f}"] for r in rows]))
  print(f"wrote {out}")
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="digits 2 epochs, small synthetic set (a smoke test, not a result)")
  parser.add_argument("--skip-digits", action="store_true", help="only the synthetic setting")
  parser.add_argument("--batch-sweep", default=None,
                      help="comma-separated batch sizes: only the synthetic setting, once each")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--plot", type=pathlib.Path, default=None)
  parser.add_argument("--workdir", type=pathlib.Path, default=None,
                      help="digits run dir (default: a temp dir)")
  args = parser.parse_args(argv)
  if args.quick:
    synthetic_kwargs = dict(num_samples=2048, dim=32, clusters=10, spread=1.0, batch=128,
                            epochs=8, alpha=0.05, lr=0.05)
  else:
    synthetic_kwargs = dict(num_samples=20_000, dim=32, clusters=10, spread=1.0, batch=256,
                            epochs=60, alpha=0.05, lr=0.05)
  if args.batch_sweep:
    out = common.output_path(args.out, "quantile_tracking_batch_sweep", args.quick)
    return batch_sweep([int(b) for b in args.batch_sweep.split(",")], synthetic_kwargs,
                       seed=args.seed, out=out, log=lambda line: print(line, flush=True))
  out = common.output_path(args.out, "quantile_tracking", args.quick)
  plot_path = args.plot or out.with_suffix(".png")
  log = lambda line: print(line, flush=True)
  started = time.time()
  report = {"benchmark": "quantile_tracking", "quick": args.quick, "machine": common.machine()}
  digits_arrays = None
  with contextlib.ExitStack() as stack:
    if not args.skip_digits:
      workdir = args.workdir or pathlib.Path(
          stack.enter_context(tempfile.TemporaryDirectory())) / "digits"
      report["digits"], digits_arrays = digits_setting(
          workdir, epochs=2 if args.quick else None, start=1 if args.quick else None,
          fnd_epochs=1 if args.quick else 5, seed=args.seed, log=log)
  report["synthetic"], synthetic_arrays = synthetic_setting(seed=args.seed, log=log,
                                                            **synthetic_kwargs)
  report["wall_s"] = time.time() - started
  common.write_json(report, out)
  plot(digits_arrays, synthetic_arrays, report, plot_path)

  rows = []
  names = []
  if "digits" in report:
    names += [("digits", "glofnd", "GloFND lambda"),
              ("digits", "fnd_as_in_training", "FND mini-batch, as in training"),
              ("digits", "fnd_unaugmented", "FND mini-batch, un-augmented")]
  names += [("synthetic", "glofnd", "GloFND lambda"), ("synthetic", "fnd", "FND mini-batch")]
  for setting, key, label in names:
    e = report[setting][key]
    rows.append([setting, label, f"{e['mean_abs_error']:.4f}", f"{e['median_abs_error']:.4f}",
                 f"{e['abs_error_q1']:.4f}-{e['abs_error_q3']:.4f}", f"{e['mean_error']:+.4f}",
                 e["num_samples"]])
  print(common.markdown_table(["setting", "estimate", "mean abs error", "median", "IQR",
                               "mean signed error", "estimates"], rows))
  print(f"wrote {out} and {plot_path}")
  return report


if __name__ == "__main__":
  main()
