"""The statistics of a study (``benchmarks/study_report.py``) on hand-made per-seed values.

Holm's adjustment against a worked example, the t-tests against scipy called directly, the family
that Holm adjusts over, and the comparisons ``quality_study`` picks for the treatment arms.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import quality_study
import study_report
from scipy import stats

ARMS = ("none", "oracle", "fnd", "fnd+attract", "fnd+reweight", "glofnd", "glofnd+attract",
        "glofnd+reweight", "glofnd+per_sample")


def test_holm_worked_example():
  # Sorted 0.01, 0.03, 0.04 of 3 tests: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04).
  adjusted = study_report.holm({"a": 0.01, "b": 0.04, "c": 0.03, "skipped": None})
  assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
  assert study_report.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}  # capped at 1


def test_compare_matches_scipy_and_drops_missing_pairs():
  a = [0.71, 0.74, None, 0.69, 0.73]
  b = [0.70, 0.71, 0.72, None, 0.70]
  out = study_report.compare(a, b)
  x, y = np.array([0.71, 0.74, 0.73]), np.array([0.70, 0.71, 0.70])  # seeds 0, 1, 4
  assert out["n"] == 3
  assert out["mean_difference"] == pytest.approx(float(np.mean(x - y)))
  assert out["paired_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
  assert out["welch_p"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue)
  one = study_report.compare([0.5], [0.4])  # one pair: a difference, no test
  assert one["mean_difference"] == pytest.approx(0.1)
  assert one["paired_p"] is None and one["welch_p"] is None
  assert study_report.compare([None], [0.4])["mean_difference"] is None


def test_metric_values_missing_or_nonfinite_are_none():
  results = {"knn": {"top1": 0.5}, "linear_probe": {"0.1": {"accuracy": float("nan")}},
             "meta": {"train_detector_last_epoch": {"fn_precision": 0.25}}}
  values = study_report.metric_values(results)
  assert values["knn_top1"] == 0.5 and values["fn_precision_batch"] == 0.25
  assert values["probe_10"] is None  # NaN
  assert values["probe_100"] is None and values["fn_recall_dataset"] is None  # not measured
  assert set(values) == set(study_report.METRICS)


def per_seed(rng, mean, seeds=5):
  return [{name: (None if name.startswith("fn_") and mean is None else
                  float(0.5 if mean is None else mean) + 0.01 * rng.standard_normal())
           for name in study_report.METRICS} for _ in range(seeds)]


def test_summarize_holm_over_the_printed_family_only():
  rng = np.random.default_rng(0)
  per_mode = {"none": per_seed(rng, None), "glofnd": per_seed(rng, 0.6), "fnd": per_seed(rng, 0.5)}
  pairs = [("glofnd", "none"), ("fnd", "none"), ("glofnd", "fnd")]
  summary, comparisons = study_report.summarize(per_mode, pairs)
  knn = [r["knn_top1"] for r in per_mode["glofnd"]]
  assert summary["glofnd"]["knn_top1"]["mean"] == pytest.approx(np.mean(knn))
  assert summary["glofnd"]["knn_top1"]["std"] == pytest.approx(np.std(knn, ddof=1))
  assert summary["none"]["fn_precision_batch"] is None  # nothing flagged: no precision
  assert list(comparisons) == ["glofnd vs none", "fnd vs none", "glofnd vs fnd"]
  # The family: every (comparison, FAMILY metric) with a difference; none has FN metrics.
  family = {(c, m): t[m]["paired_p"] for c, t in comparisons.items()
            for m in study_report.FAMILY if t[m]["mean_difference"] is not None}
  assert len(family) == 3 * len(study_report.REPRESENTATION) + 2
  expected = study_report.holm(family)
  for (c, m), p in expected.items():
    assert comparisons[c][m]["paired_p_holm"] == pytest.approx(p)
  assert "paired_p_holm" not in comparisons["glofnd vs fnd"]["fn_precision_dataset"]
  # A 10-point gain over 0.01 noise is significant after correction; equal arms are not.
  assert comparisons["glofnd vs none"]["knn_top1"]["paired_p_holm"] < 0.05
  assert comparisons["fnd vs none"]["knn_top1"]["paired_p_holm"] > 0.05


def test_print_tables_marks_significance(capsys):
  rng = np.random.default_rng(1)
  per_mode = {"none": per_seed(rng, None), "glofnd": per_seed(rng, 0.7)}
  summary, comparisons = study_report.summarize(per_mode, [("glofnd", "none")])
  study_report.print_tables(summary, comparisons)
  out = capsys.readouterr().out
  knn_row = next(line for line in out.splitlines() if "vs none | kNN top-1" in line)
  assert knn_row.rstrip(" |").endswith("yes")
  assert f"{len(study_report.REPRESENTATION)} tests." in out


def test_treatment_study_comparisons():
  pairs = set(quality_study.comparison_pairs(ARMS))
  assert {(arm, "none") for arm in ARMS[1:]} <= pairs
  assert {("glofnd", "fnd"), ("glofnd+attract", "fnd+attract"),
          ("glofnd+reweight", "fnd+reweight")} <= pairs  # same treatment, other detector
  assert {("fnd+attract", "fnd"), ("fnd+reweight", "fnd"), ("glofnd+attract", "glofnd"),
          ("glofnd+reweight", "glofnd")} <= pairs  # treatment vs removal
  assert ("glofnd+per_sample", "glofnd") in pairs  # the bias-correction ablation
  assert len(pairs) == 8 + 3 + 4 + 1


def test_tuning_grid_over_lambda_start():
  """The grid covers alpha x start x lambda start; constant-start runs keep their old names (so
  stored runs are reused); reweight's tau_w is tuned at the winning point."""
  seen = []

  def fake_results_of(runs):
    seen.extend(runs)
    out = {}
    for run in runs:
      quantile = run.config.glofnd.init_quantile
      knn = 0.5 + (0.1 if quantile else 0.0) + run.config.glofnd.alpha  # best: quantile, 0.02
      out[run.name] = {"knn": {"top1": knn}, "linear_probe": {"0.1": {"accuracy": knn}}}
    return out

  config = pathlib.Path(quality_study.ROOT / "configs" / "digits_sogclr_glofnd.py")
  tuned = quality_study.tune(config, fake_results_of, alphas=(0.01, 0.02), starts=(2,),
                             seeds=(100, 101), log=lambda line: None, tau_ws=(0.05,),
                             init_quantiles=(False, True), epochs=2)
  assert (tuned["alpha"], tuned["start_epoch"], tuned["init_quantile"]) == (0.02, 2, True)
  names = [run.name for run in seen]
  assert "tune_glofnd_a0.01_s2_seed100" in names  # the constant start: no suffix
  assert "tune_glofnd_a0.02_s2_iq_seed101" in names
  assert [n for n in names if "reweight" in n] == ["tune_glofnd+reweight_a0.02_s2_iq_t0.05_seed100",
                                                   "tune_glofnd+reweight_a0.02_s2_iq_t0.05_seed101"]
  assert all(run.config.glofnd.init_quantile == ("_iq" in run.name) for run in seen)
  assert len(tuned["grid"]) == 4 and tuned["tau_w"] == 0.05
