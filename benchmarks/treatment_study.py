"""Treatments of detected false negatives, compared on one detector: the study of issue 16.

Runs ``quality_study.py`` (same protocol: tuning on validation only, paired seeds, Welch and
paired t-tests, Holm over the whole family) with the arms

    none, oracle, fnd, fnd+attract, fnd+reweight, glofnd, glofnd+attract, glofnd+reweight,
    glofnd+per_sample (the bias-correction ablation: each sample's own update count)

on each study's recipe:

- ``glyphs``: ``configs/glyphs_sogclr_glofnd.py`` trained 8 epochs instead of the recipe's 2
  (start epoch and lambda's start, constant or batch quantile, tuned in ``STUDIES``), kNN and the
  probe at 100/10/1 % labels;
- ``digits``: the digits default at batch 32 (more negatives per anchor are in-class there).

Each study writes ``benchmarks/results/treatment_study_<study>.json`` and a plot beside it, and
prints the tables for BENCHMARKS.md. Runs are cached in ``workdir/treatment_study_<study>/`` and
their results kept in ``benchmarks/results/study_runs/treatment_study_<study>/`` (digits:
``..._digits_b32``; committed): a rerun, here or on another machine, reuses the stored runs and
resumes unfinished ones. ``--jobs N`` trains N runs at a time; ``--time-limit S`` stops cleanly
after S seconds (status 3; rerun to continue); ``--progress`` only counts the stored runs.
``benchmarks/gpu_treatment_study.sh`` runs it on a lent GPU machine.

    python benchmarks/treatment_study.py [--studies glyphs,digits] [--seeds 5] [--quick]
        [--jobs N] [--time-limit S] [--store-dir DIR] [--progress]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import quality_study

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARMS = ("none", "oracle", "fnd", "fnd+attract", "fnd+reweight", "glofnd", "glofnd+attract",
        "glofnd+reweight", "glofnd+per_sample")
STUDIES = {  # name -> (recipe, quality_study flags of the full study)
    "glyphs": ("glyphs_sogclr_glofnd.py",
               ["--epochs", "8", "--alphas", "0.01,0.02,0.05", "--starts", "2,4",
                # 8 epochs give each lambda at most 6 Adam steps of ~lr (0.05) down from 1: too
                # few to reach its quantile (flagged fraction alike for every alpha), hence the
                # batch-quantile start in the grid too.
                "--lambda-inits", "constant,quantile",
                "--tune-probe", "0.1",
                "--probe-fractions", "1.0,0.1,0.01"]),  # the recipe leaves out the 100 % probe
    "digits": ("digits_sogclr_glofnd.py", ["--batch-size", "32"]),
}


def flags(study: str, *, seeds: int, quick: bool, out_dir: pathlib.Path | None,
          store_dir: pathlib.Path | None = None) -> list[str]:
  recipe, study_flags = STUDIES[study]
  name = f"treatment_study_{study}"
  args = ["--config", str(ROOT / "configs" / recipe), "--seeds", str(seeds), "--name", name]
  if quick:  # two arms that exercise a treatment, 2 epochs, 1 seed, the recipe's batch
    args += ["--quick", "--modes", "none,glofnd+reweight"]
  else:
    args += ["--modes", ",".join(ARMS)] + study_flags
  if out_dir is not None:
    args += ["--out", str(out_dir / f"{name}.json")]
  if store_dir is not None:
    args += ["--store", str(store_dir / quality_study.runs_name(quality_study.parse_args(args)))]
  return args


def progress(study: str, study_flags: list[str]) -> str:
  args = quality_study.parse_args(study_flags)
  store = args.store or quality_study.default_store(args)
  done = len(list(store.glob("*.json"))) if store.is_dir() else 0
  return f"{study}: {done} of {quality_study.planned_runs(args)} runs in {store}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--studies", default=",".join(STUDIES))
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="a smoke test of each study")
  parser.add_argument("--out-dir", type=pathlib.Path, default=None,
                      help="where the JSON goes (default benchmarks/results/)")
  parser.add_argument("--store-dir", type=pathlib.Path, default=None,
                      help="each study's store goes in DIR/<its name> (default "
                           "benchmarks/results/study_runs/; quick: a temp dir)")
  parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
  parser.add_argument("--time-limit", type=float, default=None,
                      help="seconds for all the studies together")
  parser.add_argument("--progress", action="store_true",
                      help="print how many runs of each study are stored, and train nothing")
  args = parser.parse_args(argv)
  studies = args.studies.split(",")
  unknown = [s for s in studies if s not in STUDIES]
  if unknown:
    raise SystemExit(f"--studies: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(STUDIES)}")
  started, reports = time.time(), {}
  for study in studies:
    study_flags = flags(study, seeds=args.seeds, quick=args.quick, out_dir=args.out_dir,
                        store_dir=args.store_dir)
    if args.progress:
      print(progress(study, study_flags), flush=True)
      continue
    study_flags += ["--jobs", str(args.jobs)]
    if args.time_limit is not None:
      study_flags += ["--time-limit", str(args.time_limit - (time.time() - started))]
    print(f"== {study} ==", flush=True)
    reports[study] = quality_study.main(study_flags)
  return reports


if __name__ == "__main__":
  main()
