"""What the end-of-run evaluation of a glyphs-sized run costs, stage by stage, on this machine.

The treatment study evaluates every run (kNN, probes at 100/10/1 % labels, the exact dataset
quantile and the false-negative precision/recall over all pairs), so evaluation is a large share of
a study's CPU time. This times each stage on synthetic features of the glyphs study's shape
(39,680 train / 4,960 test, 256-d backbone features, 128-d projections, 62 classes), and the
probe's small fits with BLAS on one thread (the library's setting) against BLAS's own thread
count, side by side, repeated in alternation. Writes ``benchmarks/results/eval_cost.json``.

    python benchmarks/eval_cost.py [--quick] [--repeats R] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import numpy as np

from glofnd_jax import evaluation as ev

GLYPHS = {"num_train": 39680, "num_test": 4960, "feature_dim": 256, "proj_dim": 128,
          "num_classes": 62}
QUICK = {"num_train": 4000, "num_test": 500, "feature_dim": 64, "proj_dim": 32, "num_classes": 20}


def features(rng, num, dim, centres, labels_of):
  """Class clusters that overlap (kNN well below 100 %, like the glyphs), float32."""
  labels = labels_of(num)
  x = centres[labels][:, :dim] + 1.5 * rng.standard_normal((num, dim))
  return x.astype(np.float32), labels


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def probe_fits(train_h, train_y, test_h, test_y, fractions, threads) -> float:
  seconds, _ = timed(lambda: ev.linear_probe_fractions(train_h, train_y, test_h, test_y,
                                                       fractions=fractions, seed=0,
                                                       blas_threads=threads))
  return seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
  parser.add_argument("--repeats", type=int, default=2, help="alternations of the probe A/B")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  shape = QUICK if args.quick else GLYPHS
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((shape["num_classes"], shape["feature_dim"]))
  labels_of = lambda n: rng.integers(0, shape["num_classes"], n)
  train_h, train_y = features(rng, shape["num_train"], shape["feature_dim"], centres, labels_of)
  test_h, test_y = features(rng, shape["num_test"], shape["feature_dim"], centres, labels_of)
  train_z = train_h[:, :shape["proj_dim"]]
  report = {"benchmark": "eval_cost", "quick": args.quick, "machine": common.machine(),
            "shape": shape, "stages_s": {}}
  stages = report["stages_s"]

  ev.knn_classify(train_h, train_y, test_h[:256], test_y[:256], k=20)  # compile (same shapes)
  stages["knn (k=20), compiled"], knn = timed(lambda: ev.knn_classify(
      train_h, train_y, test_h, test_y, k=20, temperature=0.1))
  stages["dataset quantile (alpha 0.01)"], exact = timed(lambda: ev.dataset_quantile(train_z, 0.01))
  stages["FN precision/recall, all pairs"], _ = timed(lambda: ev.false_negative_precision_recall(
      train_z, train_y, exact))
  stages["probe 100 % (4 values of C)"] = probe_fits(train_h, train_y, test_h, test_y, (1.0,), 1)
  report["knn_top1"] = knn["top1"]

  small = (0.1, 0.01)  # the fits that threads slowed most beside training jobs
  ab = {"BLAS 1 thread": [], "BLAS default threads": []}
  for _ in range(args.repeats):  # alternated, so drifting load hits both arms alike
    ab["BLAS 1 thread"].append(probe_fits(train_h, train_y, test_h, test_y, small, 1))
    ab["BLAS default threads"].append(probe_fits(train_h, train_y, test_h, test_y, small, None))
  report["probe_10_and_1_percent_s"] = {arm: common.spread(v) for arm, v in ab.items()}
  one, default = (np.median(v) for v in ab.values())
  report["default_threads_over_one_thread"] = float(default / one)

  out = common.write_json(report, common.output_path(args.out, "eval_cost", args.quick))
  print(common.markdown_table(["stage", "seconds"],
                              [[k, f"{v:.1f}"] for k, v in stages.items()]))
  print()
  print(common.markdown_table(
      ["probe fits at 10 % + 1 % labels", "median s", "min s", "max s"],
      [[arm, f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}"]
       for arm, s in report["probe_10_and_1_percent_s"].items()]))
  print(f"default threads / one thread: {report['default_threads_over_one_thread']:.2f}x; "
        f"load average at start {report['machine']['load_average_at_start']}")
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
