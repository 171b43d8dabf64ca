"""What a run writes about its metrics: namespaced names, undefined values as NaN / null, plots."""

import json
import math

import numpy as np
import pytest

from glofnd_jax import detection
from glofnd_jax.evaluation import report
from glofnd_jax.training import metrics as metrics_lib
from glofnd_jax.training import plots


@pytest.mark.parametrize("name,logged", [
    ("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("u_img_mean", "train/u_img_mean"),
    ("kept_fraction", "detector/img/kept_fraction"),
    ("fn_precision@0.02", "detector/img/fn_precision@0.02"),
    ("txt/lambda_mean", "detector/txt/lambda_mean"), ("img/fn_recall", "detector/img/fn_recall"),
    ("nonfinite/loss", "nonfinite/loss"), ("train/images_per_sec", "train/images_per_sec")])
def test_logged_names_are_namespaced(name, logged):
  assert metrics_lib.logged_name(name) == logged


def test_precision_with_nothing_flagged_is_nan_not_zero():
  out = detection.diagnostics_from_counts(negatives=12, kept=12, flagged=0, same=3, hits=0)
  assert math.isnan(float(out["fn_precision"])) and float(out["fn_recall"]) == 0.0
  none_same = detection.diagnostics_from_counts(negatives=12, kept=10, flagged=2, same=0, hits=0)
  assert float(none_same["fn_precision"]) == 0.0 and math.isnan(float(none_same["fn_recall"]))


def test_nan_is_nan_in_jsonl_and_tensorboard_and_null_in_results(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path)
  for step, precision in ((1, float("nan")), (2, float("nan")), (3, 0.5), (4, float("nan"))):
    writer.write(step, {"loss": np.float32(1.0), "kept_fraction": np.float32(1.0),
                        "fn_precision": np.float32(precision), "fn_recall": np.float32("nan")})
  writer.close()
  rows = metrics_lib.read_metrics(tmp_path)
  assert math.isnan(rows[0]["detector/img/fn_precision"]) and rows[2]["train/loss"] == 1.0
  assert "NaN" in (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
  events = metrics_lib.read_tensorboard_scalars(tmp_path / "tensorboard")
  logged = [v for _, v in events["detector/img/fn_precision"]]
  assert math.isnan(logged[0]) and logged[2] == 0.5
  # The last epoch (steps 3, 4): precision averages its defined steps, recall has none.
  detector = report.last_epoch_detector(tmp_path, 2)
  assert detector["fn_precision"] == 0.5 and math.isnan(detector["fn_recall"])
  path = report.write_results(report.build_results(meta={"train_detector_last_epoch": detector}),
                              tmp_path)
  meta = json.loads(path.read_text())["meta"]["train_detector_last_epoch"]
  assert meta["fn_precision"] == 0.5 and meta["fn_recall"] is None
  # The plot draws the NaN steps as gaps (the file is written, no value is replaced by 0).
  assert (tmp_path / "fn_precision_recall.png") in plots.plot_run(tmp_path, plots.PlotSpec(2))


def test_lambda_histogram_is_drawn_on_the_occupied_range():
  counts = np.zeros((2, len(plots.LAMBDA_BINS) - 1))
  counts[0] = plots.lambda_histogram([0.91])
  counts[1] = plots.lambda_histogram([0.95])
  lo, hi = plots.occupied_range(counts, plots.LAMBDA_BINS)
  assert 0.90 <= lo <= 0.91 and 0.95 <= hi <= 0.96  # not [-1, 1]
  lo, hi = plots.occupied_range(counts[:1], plots.LAMBDA_BINS)  # one peak: widened to 0.02
  assert hi - lo == pytest.approx(0.02) and lo < 0.91 < hi


def test_evaluation_results_reach_tensorboard(tmp_path):
  results = report.build_results(knn={"top1": 0.9, "k": 20},
                                 false_negatives={"precision": None, "recall": 0.25},
                                 meta={"num_train": 64})
  metrics_lib.log_results(tmp_path, 8, results)
  events = metrics_lib.read_tensorboard_scalars(tmp_path / "tensorboard")
  assert events["eval/knn/top1"] == [(8, pytest.approx(0.9))]
  assert events["eval/false_negatives/recall"] == [(8, 0.25)]
  assert math.isnan(events["eval/false_negatives/precision"][0][1])
  assert not any(tag.startswith("eval/meta") for tag in events)
