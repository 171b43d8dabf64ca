"""Representation quality by study arm: a detector, optionally with a treatment or an ablation.

SogCLR on an embedded recipe (default ``configs/digits_sogclr_glofnd.py``; ``--config`` picks
another, e.g. the glyphs), several seeds per arm. An arm is a detection mode (none, fnd, glofnd,
glofnd_shared, oracle), optionally followed by ``+attract`` / ``+reweight`` (the treatment of what
it flags; ``remove`` otherwise) and ``+per_sample`` (Adam's bias correction from each sample's own
update count instead of the epoch rule), e.g. ``glofnd+reweight``. A seed fixes the network
initialisation and the data order, so runs of the same seed are paired across arms. Per run: kNN
top-1, linear probe at 100/10/2% labels (C chosen on the validation split), and the
false-negative precision/recall of the detector (in-batch, averaged over the last training epoch,
every mode; and, for the learned modes, of the rule ``s_ij > lambda_i`` over all pairs of the
training set).

Protocol:

1. Tuning (GloFND only, validation split only): a grid over ``alpha``, the start epoch
   (``start_update_epoch = start_mask_epoch``) and, with ``--lambda-inits constant,quantile``,
   how lambda starts (``lam_init`` then Adam steps, the paper's; or ``init_quantile``: the
   mini-batch quantile during the start epoch, for schedules too short for Adam's steps of about
   ``lr`` per epoch to bring lambda down from 1) on tuning seeds disjoint from the test seeds, then,
   when a ``reweight`` arm is studied, ``tau_w`` for ``glofnd+reweight`` at the chosen pair; each
   run is evaluated with the validation split standing in for the test split (the probe then
   picks C on 10 % held out of train), so the test split is never read. The score is the mean of
   kNN top-1 and the probe's accuracy at ``--tune-probe`` labels (default 100 %) on validation,
   averaged over tuning seeds.
2. Test: every arm with the chosen ``alpha``/start/``tau_w`` (FND, the shared threshold and the
   oracle use the same start epoch; FND the same alpha), on seeds 0..S-1, on the test split.
3. Statistics: mean +- std per arm; for each metric and each comparison (every arm vs ``none``;
   GloFND vs FND and vs the shared threshold under the same treatment; each treatment vs removal
   by the same detector; ``+per_sample`` vs the epoch rule), Welch's and the paired t-test over
   seeds (scipy); the paired p-values are also Holm-Bonferroni adjusted over the family of all tests
   in the printed table (``study_report.py``: the tests, the plot and the tables).

Runs are cached and stored (``study_runs.py``): each run's work dir (default
``workdir/quality_study/``) keeps its checkpoints and ``results.json``, and the store (default
``benchmarks/results/study_runs/quality_study/``, small enough to commit) keeps each finished run's
results with its config; a rerun, here or on another machine, reuses stored runs (an entry of
another config is an error naming the fields) and resumes unfinished ones from their checkpoints.
``--jobs N`` trains the independent runs of a phase (the tuning grid, the tau_w runs, the test
runs) N at a time, each in its own process; the report does not depend on N. ``--time-limit S``
stops the study cleanly after S seconds (rerun to continue). Writes
``benchmarks/results/quality_study.json`` and ``quality_study.png``.

    python benchmarks/quality_study.py [--quick] [--seeds 5] [--modes ARM,...] [--batch-size B]
        [--config FILE] [--epochs E] [--alphas A,...] [--starts E,...] [--lambda-inits I,...]
        [--no-tune --alpha A --start E --tau-w T] [--out FILE] [--cache DIR] [--store DIR]
        [--jobs N] [--time-limit S]

``benchmarks/treatment_study.py`` runs this study over the treatment arms.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import pathlib
import tempfile
import time

import common
import numpy as np
import study_report
import study_runs

from glofnd_jax.config.common import load_config_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_sogclr_glofnd.py"
MODES = ("none", "fnd", "glofnd", "glofnd_shared", "oracle")
ALPHAS = (0.02, 0.05, 0.1)
STARTS = (10, 20)
TAU_WS = (0.02, 0.05, 0.1)
LAMBDA_INITS = {"constant": False, "quantile": True}  # -> glofnd.init_quantile
TREATMENTS = ("attract", "reweight")  # arm suffixes; no suffix is "remove"
ABLATIONS = ("per_sample",)
TUNING_SEEDS = (100, 101)


def parse_arm(arm: str) -> dict:
  """``"glofnd+reweight+per_sample"`` -> ``{"mode": "glofnd", "treatment": "reweight", ...}``."""
  mode, *suffixes = arm.split("+")
  if mode not in MODES:
    raise SystemExit(f"arm {arm!r}: the detection mode must be one of {', '.join(MODES)}")
  parsed = {"mode": mode, "treatment": "remove", "per_sample": False}
  for suffix in suffixes:
    if suffix in TREATMENTS and parsed["treatment"] == "remove":
      parsed["treatment"] = suffix
    elif suffix in ABLATIONS and not parsed[suffix]:
      parsed[suffix] = True
    else:
      raise SystemExit(f"arm {arm!r}: {suffix!r} is not one of {', '.join(TREATMENTS + ABLATIONS)}"
                       " (each at most once)")
  if mode == "none" and suffixes:
    raise SystemExit(f"arm {arm!r}: 'none' flags nothing, so it takes no treatment or ablation")
  return parsed


def arm_name(mode: str, treatment: str = "remove", per_sample: bool = False) -> str:
  return "+".join([mode] + ([treatment] if treatment != "remove" else [])
                  + (["per_sample"] if per_sample else []))


def make_config(config_path: pathlib.Path, arm: str, seed: int, alpha: float, start: int, *,
                epochs: int | None, on_validation: bool, probe_fractions=None,
                batch_size: int | None = None, tau_w: float | None = None,
                init_quantile: bool | None = None):
  c = load_config_file(config_path)
  c.seed = seed
  if batch_size is not None:
    c.batch_size = batch_size  # the optimiser's lr scales with it (config's lr_scaling)
  parsed = parse_arm(arm)
  c.glofnd.mode = parsed["mode"]
  c.glofnd.treatment = parsed["treatment"]
  c.glofnd.per_sample_steps = parsed["per_sample"]
  if tau_w is not None:
    c.glofnd.tau_w = tau_w
  if init_quantile is not None:  # None: the recipe's (the paper's constant start, lam_init)
    c.glofnd.init_quantile = init_quantile
  c.glofnd.alpha = alpha
  c.glofnd.start_update_epoch = start
  c.glofnd.start_mask_epoch = start
  if epochs is not None:
    c.epochs = epochs
    c.optim.warmup_epochs = min(c.optim.warmup_epochs, max(epochs - 1, 0))
    c.checkpoint_every_steps = 10**6  # only the final checkpoint
  if on_validation:  # tuning: the validation split plays the test split; never read test
    c.data.test_split = c.data.val_split
    c.data.val_split = ""
  if probe_fractions is not None:
    c.eval.probe_fractions = tuple(probe_fractions)
  return c


def make_run(name: str, **settings) -> study_runs.Run:
  """A run named ``name`` (its work dir and store entry) of ``make_config(**settings)``."""
  settings["config_path"] = str(settings["config_path"])  # JSON for a child process
  return study_runs.Run(name, settings, make_config(**settings))


def validation_scores(config_path, results_of, arm, points, seeds, **kw) -> list[tuple]:
  """For each point of ``points`` (``make_config`` settings: alpha, start and optionally tau_w,
  init_quantile): the mean over ``seeds`` of (kNN top-1 + first-probe accuracy) / 2 on the
  validation split, and the per-seed scores."""
  runs = {}
  for k, point in enumerate(points):
    name = (f"tune_{arm}_a{point['alpha']:g}_s{point['start']}"
            + ("_iq" if point.get("init_quantile") else "")
            + ("" if point.get("tau_w") is None else f"_t{point['tau_w']:g}"))
    for seed in seeds:
      runs[k, seed] = make_run(f"{name}_seed{seed}", config_path=config_path, arm=arm, seed=seed,
                               on_validation=True, **point, **kw)
  results = results_of(list(runs.values()))  # every point's runs at once: one phase
  out = []
  for k in range(len(points)):
    scores = []
    for seed in seeds:
      r = results[runs[k, seed].name]
      probe = r["linear_probe"][next(iter(r["linear_probe"]))]
      scores.append({"knn_top1": r["knn"]["top1"], "probe": probe["accuracy"]})
    out.append((float(np.mean([(s["knn_top1"] + s["probe"]) / 2 for s in scores])), scores))
  return out


def tune(config_path: pathlib.Path, results_of, *, alphas, starts, seeds, log, tau_ws=(),
         init_quantiles=(False,), **kw) -> dict:
  """The grid ``alphas x starts x init_quantiles`` for GloFND's removal, then ``tau_ws`` for
  ``glofnd+reweight`` at the best point; ties go to the first in grid order."""
  grid = [{"alpha": a, "start": s, "init_quantile": q}
          for q, a, s in itertools.product(init_quantiles, alphas, starts)]
  rows = []
  for p, (score, scores) in zip(grid, validation_scores(config_path, results_of, "glofnd",
                                                        grid, seeds, **kw)):
    rows.append({"alpha": p["alpha"], "start_epoch": p["start"],
                 "init_quantile": p["init_quantile"], "val_score": score, "per_seed": scores})
    log(f"tuning alpha={p['alpha']:g} start={p['start']}"
        f"{' init_quantile' if p['init_quantile'] else ''}: val score {score:.4f}")
  best_index = max(range(len(rows)), key=lambda k: (rows[k]["val_score"], -k))
  best, best_point = rows[best_index], grid[best_index]
  tuned = {"grid": rows, "alpha": best["alpha"], "start_epoch": best["start_epoch"],
           "init_quantile": best["init_quantile"], "tau_w": None, "seeds": list(seeds),
           "criterion": "mean over tuning seeds of (kNN top-1 + the first probe's accuracy) / 2 "
           "on the validation split"}
  tau_rows = []  # at the chosen point: the detector is tuned once, for removal
  tau_points = [{**best_point, "tau_w": tau_w} for tau_w in tau_ws]
  for tau_w, (score, scores) in zip(tau_ws, validation_scores(
      config_path, results_of, "glofnd+reweight", tau_points, seeds, **kw) if tau_points else []):
    tau_rows.append({"tau_w": tau_w, "val_score": score, "per_seed": scores})
    log(f"tuning tau_w={tau_w:g}: val score {score:.4f}")
  if tau_rows:
    tuned["tau_w_grid"] = tau_rows
    tuned["tau_w"] = max(tau_rows, key=lambda r: r["val_score"])["tau_w"]
  return tuned


def comparison_pairs(arms) -> list[tuple[str, str]]:
  """The family of comparisons among ``arms``: each vs none; GloFND vs FND and vs the shared
  threshold under the same treatment; each treatment vs removal by the same detector;
  ``+per_sample`` vs the epoch rule."""
  arms = list(arms)
  pairs = [(a, "none") for a in arms if a != "none" and "none" in arms]
  for a in arms:
    p = parse_arm(a)
    if p["mode"] == "glofnd":
      pairs += [(a, b) for other in ("fnd", "glofnd_shared")
                if (b := arm_name(other, p["treatment"], p["per_sample"])) in arms]
    if p["treatment"] != "remove":
      pairs += [(a, b) for b in [arm_name(p["mode"], "remove", p["per_sample"])] if b in arms]
    if p["per_sample"]:
      pairs += [(a, b) for b in [arm_name(p["mode"], p["treatment"])] if b in arms]
  return pairs


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="1 seed, 2 epochs, 10%% probe only, no tuning "
                           "(a smoke test)")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--modes", default=None,
                      help="arms, comma-separated: MODE[+attract|+reweight][+per_sample] "
                           "(default: every mode; quick: none,glofnd)")
  parser.add_argument("--config", type=pathlib.Path, default=CONFIG, help="the recipe studied")
  parser.add_argument("--epochs", type=int, default=None, help="instead of the recipe's")
  parser.add_argument("--alphas", default=",".join(map(str, ALPHAS)), help="tuning grid")
  parser.add_argument("--starts", default=",".join(map(str, STARTS)), help="tuning grid")
  parser.add_argument("--lambda-inits", default="constant",
                      help="tuning grid of lambda's start: constant (lam_init, then Adam: the "
                           "paper's) and/or quantile (glofnd.init_quantile: the mini-batch "
                           "quantile during the start epoch)")
  parser.add_argument("--tau-ws", default=",".join(map(str, TAU_WS)),
                      help="tuning grid of tau_w (only when a +reweight arm is studied)")
  parser.add_argument("--tune-probe", type=float, default=1.0,
                      help="the label fraction of the probe in the tuning score")
  parser.add_argument("--probe-fractions", default=None,
                      help="label fractions of the test runs' probes (default: the recipe's)")
  parser.add_argument("--no-tune", action="store_true",
                      help="skip tuning; use the config's alpha/start/tau_w (or the flags)")
  parser.add_argument("--alpha", type=float, default=None)
  parser.add_argument("--start", type=int, default=None)
  parser.add_argument("--tau-w", type=float, default=None)
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--plot", type=pathlib.Path, default=None)
  parser.add_argument("--batch-size", type=int, default=None,
                      help="global batch instead of the config's (default cache: "
                           "workdir/quality_study_b<B>)")
  parser.add_argument("--cache", type=pathlib.Path, default=None,
                      help="run work dirs (default workdir/<name>[_b<B>]; quick: a temp dir)")
  parser.add_argument("--store", type=pathlib.Path, default=None,
                      help="finished runs' results, kept to resume the study elsewhere (default "
                           "benchmarks/results/study_runs/<name>[_b<B>]; quick: a temp dir)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="runs of a phase trained at once, each in its own process")
  parser.add_argument("--time-limit", type=float, default=None,
                      help="seconds: then no run starts, running ones stop, and the study exits "
                           f"with status {study_runs.EXIT_TIME_LIMIT} (rerun to continue)")
  parser.add_argument("--ignore-field", action="append", default=[], metavar="FIELD",
                      help="a config field (dotted) that stored or cached runs may lack or differ "
                           "in, e.g. one added since they ran whose default keeps their behaviour")
  parser.add_argument("--name", default="quality_study", help="the report's name and JSON file")
  args = parser.parse_args(argv)
  unknown = set(args.lambda_inits.split(",")) - set(LAMBDA_INITS)
  if unknown:
    parser.error(f"--lambda-inits {args.lambda_inits}: {', '.join(sorted(unknown))} is not one "
                 f"of {', '.join(LAMBDA_INITS)}")
  if args.jobs < 1:
    parser.error(f"--jobs {args.jobs}: give 1 or more runs at a time")
  return args


def study_dirs(args, stack: contextlib.ExitStack) -> tuple[pathlib.Path, study_runs.Store]:
  """The cache (run work dirs) and the store: a quick run's default to temp dirs."""
  temp = lambda: pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
  cache = args.cache or (temp() if args.quick else ROOT / "workdir" / runs_name(args))
  cache.mkdir(parents=True, exist_ok=True)
  return cache, study_runs.Store(args.store or (temp() if args.quick else default_store(args)))


def runs_name(args) -> str:
  return args.name if args.batch_size is None else f"{args.name}_b{args.batch_size}"


def default_store(args) -> pathlib.Path:
  return common.RESULTS / "study_runs" / runs_name(args)


def study_arms(args) -> tuple[str, ...]:
  arms = tuple((args.modes or ("none,glofnd" if args.quick else ",".join(MODES))).split(","))
  for arm in arms:
    parse_arm(arm)  # a misspelt arm fails before the first run
  return arms


def planned_runs(args) -> int:
  """How many runs the study of ``args`` trains in all (tuning and test)."""
  arms = study_arms(args)
  if args.quick:
    return len(arms)
  tuning = 0 if args.no_tune else len(TUNING_SEEDS) * (
      len(args.alphas.split(",")) * len(args.starts.split(",")) * len(args.lambda_inits.split(","))
      + (len(args.tau_ws.split(",")) if any("+reweight" in a for a in arms) else 0))
  return tuning + len(arms) * args.seeds


def describe_jobs(jobs: int, log) -> None:
  """Which device the children share. Run before jax is used here: this process then takes GPU
  memory as needed, not the default 75 %, leaving it to the children."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax
  backend = jax.default_backend()
  if backend == "cpu":
    log(f"--jobs {jobs} on CPU: the runs share the {os.cpu_count()} cores (each is slower; the "
        "results are the same)")
  else:
    log(f"--jobs {jobs} on {backend}: each run may take {0.9 / jobs:.0%} of the device memory")


def main(argv=None):
  args = parse_args(argv)
  arms = study_arms(args)
  out = common.output_path(args.out, args.name, args.quick)
  plot_path = args.plot or out.with_suffix(".png")
  started = time.time()
  log = lambda line: print(line, flush=True)
  if args.jobs > 1:
    describe_jobs(args.jobs, log)
  base = load_config_file(args.config)
  floats = lambda text: tuple(float(v) for v in text.split(",") if v)
  kw = {"epochs": args.epochs, "batch_size": args.batch_size}

  with contextlib.ExitStack() as stack:
    cache, store = study_dirs(args, stack)
    results_of = functools.partial(
        study_runs.results_of, cache=cache, store=store, jobs=args.jobs, log=log,
        deadline=None if args.time_limit is None else started + args.time_limit,
        ignore=tuple(args.ignore_field))
    tau_w, init_quantile = args.tau_w, None
    if args.quick:
      seeds, kw["epochs"] = (0,), 2
      alpha, start, tuning = base.glofnd.alpha, 1, None
      probe_fractions = (0.1,)  # the 100 % probe's fits dominate a short run's evaluation
    else:
      seeds = tuple(range(args.seeds))
      probe_fractions = floats(args.probe_fractions) if args.probe_fractions else None
      if args.no_tune:
        tuning = None
        alpha = args.alpha if args.alpha is not None else base.glofnd.alpha
        start = args.start if args.start is not None else base.glofnd.start_mask_epoch
      else:
        alphas, starts = floats(args.alphas), tuple(int(v) for v in floats(args.starts))
        tau_ws = floats(args.tau_ws) if any("+reweight" in a for a in arms) else ()
        inits = args.lambda_inits.split(",")
        log(f"tuning on validation: alpha in {alphas}, start in {starts}, lambda start in "
            f"{tuple(inits)}, tau_w in {tau_ws}, seeds {TUNING_SEEDS}")
        tuning = tune(args.config, results_of, alphas=alphas, starts=starts,
                      seeds=TUNING_SEEDS, log=log, tau_ws=tau_ws,
                      init_quantiles=tuple(LAMBDA_INITS[v] for v in inits),
                      probe_fractions=(args.tune_probe,), **kw)
        alpha, start, tau_w = tuning["alpha"], tuning["start_epoch"], tuning["tau_w"]
        init_quantile = tuning["init_quantile"]
    log(f"test runs: arms {', '.join(arms)}, seeds {list(seeds)}, alpha {alpha:g}, "
        f"start epoch {start}" + (", lambda from the batch quantile" if init_quantile else "")
        + ("" if tau_w is None else f", tau_w {tau_w:g}"))
    runs = [make_run(f"{arm}_seed{seed}", config_path=args.config, arm=arm, seed=seed,
                     alpha=alpha, start=start, on_validation=False,
                     probe_fractions=probe_fractions, tau_w=tau_w,
                     init_quantile=init_quantile, **kw)
            for seed in seeds for arm in arms]  # seed-major: early seeds have every arm first
    results = results_of(runs)

  per_mode, raw = {}, {}
  for run in runs:
    arm, seed = run.settings["arm"], run.settings["seed"]
    values = study_report.metric_values(results[run.name])
    if arm == "none":  # nothing is flagged: precision and recall are undefined, not 0
      values.update({name: None for name in study_report.METRICS if name.startswith("fn_")})
    per_mode.setdefault(arm, []).append(values)
    raw.setdefault(arm, []).append({"seed": seed, **values})
  summary, comparisons = study_report.summarize(per_mode, comparison_pairs(per_mode))
  epochs = kw["epochs"] or base.epochs
  batch_size = args.batch_size or base.batch_size
  report = {"benchmark": args.name, "quick": args.quick, "machine": common.machine(),
            "config": str(args.config.resolve().relative_to(ROOT)), "epochs": epochs,
            "batch_size": batch_size, "alpha": alpha, "start_epoch": start, "tau_w": tau_w,
            "init_quantile": bool(init_quantile),
            "seeds": list(seeds), "tuning": tuning,
            "metrics": {name: label for name, (label, _) in study_report.METRICS.items()},
            "summary": summary, "runs": raw, "comparisons": comparisons,
            "wall_s": time.time() - started}
  common.write_json(report, out)
  study_report.plot(summary, plot_path,
                    f"SogCLR on {base.data.name}, batch {batch_size}, {epochs} epochs, "
                    f"{len(seeds)} seed(s), alpha={alpha:g}, start epoch {start}"
                    + (", lambda from the batch quantile" if init_quantile else ""))
  study_report.print_tables(summary, comparisons)
  print(f"wrote {out} and {plot_path}")
  return report


if __name__ == "__main__":
  main()
