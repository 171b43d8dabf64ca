"""Tests of glofnd_jax.evaluation: kNN, linear probe (frozen backbone), FN precision/recall,
exact dataset quantile, and the results report."""

import inspect
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import evaluation as evaluate
from glofnd_jax.evaluation import features as features_lib
from glofnd_jax.evaluation import linear_probe as probe_lib


def _clusters(num_classes, per_class, dim, noise, seed):
  """Gaussian blobs around random (nearly orthogonal) centres; labels in class-major order."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), per_class)
  x = centres[labels] + noise * rng.normal(size=(len(labels), dim))
  return x.astype(np.float32), labels


def _normalized(x):
  return np.asarray(x, np.float64) / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------- kNN


def _knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
  """Brute-force numpy weighted kNN: predicted class per query."""
  sims = _normalized(test_x) @ _normalized(train_x).T
  top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  scores = np.zeros((len(test_x), num_classes))
  for q in range(len(test_x)):
    for j in top[q]:
      scores[q, train_y[j]] += np.exp(sims[q, j] / temperature)
  return np.argmax(scores, axis=1)


def test_knn_separated_clusters_near_perfect():
  x, y = _clusters(10, 60, 32, noise=0.2, seed=0)
  rng = np.random.default_rng(1)
  order = rng.permutation(len(y))
  train, test = order[:450], order[450:]
  result = evaluate.knn_classify(x[train], y[train], jnp.asarray(x[test]), y[test])
  assert result["top1"] >= 0.99
  assert result["top5"] >= 0.99
  assert result["k"] == 200 and result["temperature"] == 0.1
  assert result["num_train"] == 450 and result["num_test"] == 150


def test_knn_random_labels_near_chance():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1500, 16)).astype(np.float32)
  y = rng.integers(0, 10, size=1500)
  result = evaluate.knn_classify(x[:1000], y[:1000], x[1000:], y[1000:], k=50)
  assert 0.03 < result["top1"] < 0.2  # chance is 0.1
  assert 0.35 < result["top5"] < 0.65  # chance is 0.5


def test_knn_matches_reference_and_chunking():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(130, 8)).astype(np.float32)
  y = rng.integers(0, 4, size=130) + 7  # non-contiguous ids: remapped internally
  train_x, train_y, test_x, test_y = x[:100], y[:100], x[100:], y[100:]
  expected = _knn_reference(train_x, train_y - 7, test_x, k=9, temperature=0.07, num_classes=4)
  expected_top1 = float(np.mean(expected == test_y - 7))
  small = evaluate.knn_classify(train_x, train_y, test_x, test_y, k=9, temperature=0.07,
                                chunk_size=7)
  whole = evaluate.knn_classify(train_x, train_y, test_x, test_y, k=9, temperature=0.07,
                                chunk_size=1000)
  assert small["top1"] == whole["top1"] == expected_top1
  assert "top5" not in small  # only 4 classes
  capped = evaluate.knn_classify(train_x, train_y, test_x, test_y, k=10_000)
  assert capped["k"] == 100


def test_knn_small_temperature_does_not_overflow():
  x, y = _clusters(5, 20, 8, noise=0.1, seed=4)
  result = evaluate.knn_classify(x, y, x, y, k=10, temperature=0.005)
  assert result["top1"] == 1.0


# ------------------------------------------------------------------------------ linear probe


def test_class_balanced_subset_counts_and_nesting():
  labels = np.repeat(np.arange(4), [100, 50, 7, 1])
  expected = {1.0: [100, 50, 7, 1], 0.1: [10, 5, 1, 1], 0.01: [1, 1, 1, 1]}
  subsets = {}
  for fraction, counts in expected.items():
    subset = evaluate.class_balanced_subset(labels, fraction, seed=5)
    subsets[fraction] = set(subset.tolist())
    assert np.bincount(labels[subset], minlength=4).tolist() == counts
    assert len(subsets[fraction]) == len(subset)  # no duplicates
  assert subsets[0.01] <= subsets[0.1] <= subsets[1.0]
  again = evaluate.class_balanced_subset(labels, 0.1, seed=5)
  other = evaluate.class_balanced_subset(labels, 0.1, seed=6)
  assert set(again.tolist()) == subsets[0.1]
  assert set(other.tolist()) != subsets[0.1]
  with pytest.raises(ValueError):
    evaluate.class_balanced_subset(labels, 0.0)


def test_split_validation_is_stratified_and_disjoint():
  labels = np.repeat(np.arange(3), [40, 20, 1])
  pool, val = evaluate.split_validation(labels, 0.1, seed=0)
  assert not set(pool.tolist()) & set(val.tolist())
  assert sorted(pool.tolist() + val.tolist()) == list(range(len(labels)))
  assert np.bincount(labels[val], minlength=3).tolist() == [4, 2, 0]
  assert np.bincount(labels[pool], minlength=3).tolist() == [36, 18, 1]


def _probe_data(seed=7):
  x, y = _clusters(5, 130, 24, noise=1.5, seed=seed)  # overlapping: C matters a little
  rng = np.random.default_rng(seed + 1)
  order = rng.permutation(len(y))
  return x[order[:500]], y[order[:500]], x[order[500:]], y[order[500:]]


def test_linear_probe_fractions_sizes_and_selection_on_validation():
  train_x, train_y, test_x, test_y = _probe_data()
  results = evaluate.linear_probe_fractions(train_x, train_y, test_x, test_y, seed=3)
  assert list(results) == ["1", "0.1", "0.01"]
  pool, val = evaluate.split_validation(train_y, 0.1, seed=3)
  pool_counts = np.bincount(train_y[pool])
  for key, fraction in (("1", 1.0), ("0.1", 0.1), ("0.01", 0.01)):
    entry = results[key]
    expected = sum(max(1, math.floor(fraction * n + 0.5)) for n in pool_counts)
    assert entry["num_labeled"] == expected
    assert entry["num_val"] == len(val) and entry["num_test"] == len(test_y)
    assert entry["label_fraction"] == fraction
    # The chosen C is the (first) best on validation.
    best = int(np.argmax(entry["val_accuracies"]))
    assert entry["c"] == entry["c_grid"][best]
    assert entry["val_accuracy"] == max(entry["val_accuracies"])
  assert results["0.01"]["num_labeled"] == 5  # one per class
  assert results["1"]["accuracy"] > 0.75

  # The test split cannot influence any choice: replacing it with noise and shuffled labels
  # changes the reported accuracy only, never C or the validation scores.
  rng = np.random.default_rng(0)
  noise_x = rng.normal(size=test_x.shape).astype(np.float32)
  noise_y = rng.permutation(test_y)
  noisy = evaluate.linear_probe_fractions(train_x, train_y, noise_x, noise_y, seed=3)
  for key in results:
    for field in ("c", "val_accuracies", "num_labeled", "num_val"):
      assert noisy[key][field] == results[key][field]
  assert noisy["1"]["accuracy"] < results["1"]["accuracy"]


def test_linear_probe_selects_c_with_validation_set():
  train_x, train_y, test_x, test_y = _probe_data(seed=11)
  val_x, val_y = train_x[:100], train_y[:100]
  fit_x, fit_y = train_x[100:], train_y[100:]
  grid = (0.001, 1.0)
  entry = evaluate.transfer(fit_x, fit_y, test_x, test_y, val_features=val_x, val_labels=val_y,
                            c_grid=grid)
  assert entry["num_labeled"] == len(fit_y) and entry["num_val"] == 100
  # Recompute each C's validation accuracy by hand (the pool's standardisation, one fit per C):
  # the reported scores and the choice must follow them.
  scaler_mean, scaler_std = fit_x.mean(0), fit_x.std(0)
  z = lambda a: (a - scaler_mean) / scaler_std
  models = {c: probe_lib._fit(z(fit_x), fit_y, c, 1000, 0)[0] for c in grid}
  val_acc = [float(np.mean(models[c].predict(z(val_x)) == val_y)) for c in grid]
  assert entry["val_accuracies"] == pytest.approx(val_acc)
  assert entry["c"] == grid[int(np.argmax(val_acc))]


def test_probe_fits_run_blas_on_one_thread(monkeypatch):
  """Machine-independent probes: lbfgs sums in one order whatever the core count."""
  from threadpoolctl import threadpool_info
  seen = []
  fit = probe_lib.LogisticRegression.fit

  def recording_fit(self, x, y):
    seen.append([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"])
    return fit(self, x, y)

  monkeypatch.setattr(probe_lib.LogisticRegression, "fit", recording_fit)
  train_x, train_y, test_x, test_y = _probe_data(seed=5)
  evaluate.linear_probe_fractions(train_x, train_y, test_x, test_y, fractions=(1.0,),
                                  c_grid=(0.1, 1.0))
  assert len(seen) == 2 and all(threads and set(threads) == {1} for threads in seen)


# --------------------------------------------------------------------- frozen-backbone proof


class _TinyEncoder(nn.Module):
  """Dense -> BatchNorm (running averages) -> ReLU -> Dense: params and state, like a backbone."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    return nn.Dense(8)(nn.relu(x))


def test_probe_leaves_backbone_frozen():
  train_x, train_y, test_x, test_y = _probe_data(seed=13)
  model = _TinyEncoder()
  variables = model.init(jax.random.key(0), train_x[:2])
  # Non-trivial batch statistics, so a train-mode pass would visibly change them.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda v: v + 0.5, variables["batch_stats"])}
  snapshot = jax.tree.map(lambda leaf: np.array(leaf, copy=True), variables)
  apply_fn = lambda v, x: model.apply(v, x)

  # Uneven input batches, regrouped to 32: order and padding must not change any row.
  pieces = [train_x[:5], train_x[5:45], train_x[45:48], train_x[48:]]
  train_features = evaluate.extract_features(apply_fn, variables, pieces, batch_size=32)
  test_features = evaluate.extract_features(apply_fn, variables, test_x, batch_size=32)
  np.testing.assert_allclose(train_features, np.asarray(apply_fn(variables, train_x)),
                             rtol=1e-5, atol=1e-5)
  assert train_features.dtype == np.float32 and isinstance(train_features, np.ndarray)

  probe = evaluate.linear_probe_fractions(train_features, train_y, test_features, test_y,
                                fractions=(1.0, 0.1))
  evaluate.knn_classify(train_features, train_y, test_features, test_y, k=20)
  evaluate.transfer(train_features, train_y, test_features, test_y)

  # 1. Every parameter and state leaf is bit-identical and still alive (not donated).
  for leaf, before in zip(jax.tree.leaves(variables), jax.tree.leaves(snapshot)):
    assert not leaf.is_deleted()
    np.testing.assert_array_equal(np.asarray(leaf), before)
  # 2. Features after the whole evaluation are bit-identical to those before it, so the probe
  #    results are a function of the frozen network only.
  again = evaluate.extract_features(apply_fn, variables, pieces, batch_size=32)
  np.testing.assert_array_equal(again, train_features)
  assert evaluate.linear_probe_fractions(again, train_y, test_features, test_y,
                               fractions=(1.0, 0.1)) == probe
  # 3. No gradient reaches the backbone through the feature path: the derivative of any
  #    function of the extracted features w.r.t. params is exactly zero, while the same loss on
  #    the raw apply_fn has a non-zero gradient (so this check could fail).
  frozen = features_lib.frozen_feature_fn(apply_fn)
  frozen_grad = jax.grad(lambda v: jnp.sum(frozen(v, train_x[:16]) ** 2))(variables)
  raw_grad = jax.grad(lambda v: jnp.sum(apply_fn(v, train_x[:16]) ** 2))(variables)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(frozen_grad))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(raw_grad["params"]))
  # 4. The probe API accepts arrays only: nothing in it can reach a network to update.
  for fn in (evaluate.linear_probe_fractions, evaluate.transfer, evaluate.knn_classify):
    assert not any("apply" in p or "param" in p for p in inspect.signature(fn).parameters)


def test_extract_features_from_padded_batch_dicts():
  """A pipeline's batch dicts: padding rows (valid < 0) dropped, tuple outputs, carried fields."""
  rng = np.random.default_rng(17)
  x = rng.normal(size=(10, 4)).astype(np.float32)
  w = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  both = lambda v, a, b: (a @ v["w"], (a + b) @ v["w"])
  batches = []
  for start in (0, 4, 8):  # batches of 4, the last padded with two rows marked -1
    rows = np.arange(start, start + 4)
    valid = np.where(rows < 10, rows, -1)
    images = np.where((rows < 10)[:, None], x[np.minimum(rows, 9)], 99.0).astype(np.float32)
    batches.append({"image": images, "other": 2 * images, "key": valid, "label": valid % 3})
  frozen = evaluate.frozen_feature_fn(both)
  (first, second), fields = evaluate.extract_features(
      frozen, w, batches, inputs=("image", "other"), valid="key", carry=("label", "key"))
  np.testing.assert_allclose(first, x @ np.asarray(w["w"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(second, 3 * x @ np.asarray(w["w"]), rtol=1e-5, atol=1e-5)
  assert first.shape == (10, 3) and first.dtype == np.float32
  assert fields["key"].tolist() == list(range(10))
  assert fields["label"].tolist() == [i % 3 for i in range(10)]
  # Arrays of a tuple-valued apply_fn come back as a tuple of arrays in input order.
  pair = evaluate.extract_features(lambda v, a: (a @ v["w"], a), w, [x[:3], x[3:]], batch_size=4)
  np.testing.assert_array_equal(pair[1], x)
  with pytest.raises(ValueError, match="no batches"):
    evaluate.extract_features(frozen, w, [], inputs=("image", "other"))


# ------------------------------------------------------------------- false-negative metrics


def _fn_reference(z, labels, lam, anchors):
  sims = z @ z.T
  flagged = true_flagged = same_class = 0
  for i in anchors:
    others = np.arange(len(labels)) != i
    flag = (sims[i] > lam[i]) & others
    same = (labels == labels[i]) & others
    flagged += int(flag.sum())
    true_flagged += int((flag & same).sum())
    same_class += int(same.sum())
  return flagged, true_flagged, same_class


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_false_negative_precision_recall_matches_brute_force(chunk_size):
  rng = np.random.default_rng(21)
  z = _normalized(rng.normal(size=(150, 8))).astype(np.float32)
  labels = rng.integers(0, 5, size=150)
  lam = rng.uniform(-0.1, 0.7, size=150).astype(np.float32)
  sims = z.astype(np.float64) @ z.T.astype(np.float64)
  assert np.min(np.abs(sims - lam[:, None])) > 1e-5  # no pair within rounding of its threshold
  anchors = np.arange(150)
  flagged, true_flagged, same_class = _fn_reference(z.astype(np.float64), labels, lam, anchors)
  result = evaluate.false_negative_precision_recall(z, labels, lam, chunk_size=chunk_size,
                                                    normalize=False)
  assert result["num_flagged"] == flagged
  assert result["num_true_flagged"] == true_flagged
  assert result["num_same_class_pairs"] == same_class
  assert result["num_pairs"] == 150 * 149
  assert result["precision"] == pytest.approx(true_flagged / flagged)
  assert result["recall"] == pytest.approx(true_flagged / same_class)
  assert result["flagged_fraction"] == pytest.approx(flagged / (150 * 149))

  subset = np.array([3, 50, 149, 0, 77])
  sub = evaluate.false_negative_precision_recall(z, labels, lam, anchors=subset,
                                                 chunk_size=chunk_size, normalize=False)
  expected = _fn_reference(z.astype(np.float64), labels, lam, subset)
  assert (sub["num_flagged"], sub["num_true_flagged"], sub["num_same_class_pairs"]) == expected


def test_cross_modal_false_negatives_match_brute_force():
  """Anchors of one modality against the other's candidates; the pair i == j never counts."""
  rng = np.random.default_rng(23)
  image = _normalized(rng.normal(size=(60, 6))).astype(np.float32)
  text = _normalized(rng.normal(size=(60, 6))).astype(np.float32)
  labels = rng.integers(0, 4, size=60)
  lam = rng.uniform(-0.2, 0.5, size=60).astype(np.float32)
  sims = image.astype(np.float64) @ text.T.astype(np.float64)
  assert np.min(np.abs(sims - lam[:, None])) > 1e-5
  others = ~np.eye(60, dtype=bool)
  flag = (sims > lam[:, None]) & others
  same = (labels[:, None] == labels[None, :]) & others
  result = evaluate.false_negative_precision_recall(image, labels, lam, candidates=text,
                                                    chunk_size=16)
  assert result["num_flagged"] == int(flag.sum())
  assert result["num_true_flagged"] == int((flag & same).sum())
  assert result["num_same_class_pairs"] == int(same.sum()) and result["num_pairs"] == 60 * 59
  # Same-modal is the special case candidates = the anchors' own features.
  assert (evaluate.false_negative_precision_recall(image, labels, lam, candidates=image)
          == evaluate.false_negative_precision_recall(image, labels, lam))
  with pytest.raises(ValueError, match="same N"):
    evaluate.false_negative_precision_recall(image, labels, lam, candidates=text[:5])


def test_per_sample_lambda_broadcasts_shared_and_cuts_padding():
  np.testing.assert_array_equal(evaluate.per_sample_lambda(jnp.float32([0.5]), 4), [0.5] * 4)
  np.testing.assert_array_equal(evaluate.per_sample_lambda(jnp.arange(6.0), 4), [0, 1, 2, 3])


def test_false_negative_nothing_flagged_gives_nan_precision():
  rng = np.random.default_rng(22)
  z = rng.normal(size=(20, 4)).astype(np.float32)
  labels = np.arange(20) % 3
  result = evaluate.false_negative_precision_recall(z, labels, np.full(20, 1.0))
  assert result["num_flagged"] == 0 and math.isnan(result["precision"])
  assert result["recall"] == 0.0


# -------------------------------------------------------------------------- exact quantile


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5, 0.93])
def test_dataset_quantile_matches_numpy(alpha):
  rng = np.random.default_rng(31)
  x = rng.normal(size=(121, 6)).astype(np.float32)
  z = _normalized(x)
  sims = z @ z.T
  expected = np.array([np.quantile(np.delete(sims[i], i), 1.0 - alpha) for i in range(len(z))])
  chunked = evaluate.dataset_quantile(x, alpha, chunk_size=16)
  whole = evaluate.dataset_quantile(x, alpha, chunk_size=1000)
  assert chunked.shape == (121,) and chunked.dtype == np.float32
  np.testing.assert_allclose(chunked, expected, rtol=0, atol=2e-6)
  np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_dataset_quantile_two_samples():
  x = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
  np.testing.assert_allclose(evaluate.dataset_quantile(x, 0.01), [0.6, 0.6], atol=1e-6)


def test_lambda_error():
  error = evaluate.lambda_error(np.array([0.5, 0.2, 0.9]), np.array([0.4, 0.4, 0.9]))
  assert error["mean_abs_error"] == pytest.approx(0.1)
  assert error["median_abs_error"] == pytest.approx(0.1)
  assert error["max_abs_error"] == pytest.approx(0.2)
  assert error["mean_error"] == pytest.approx(-0.1 / 3)
  assert error["num_samples"] == 3


# -------------------------------------------------------------------------------- report


def test_report_round_trips_through_json(tmp_path):
  train_x, train_y, test_x, test_y = _probe_data(seed=41)
  knn = evaluate.knn_classify(train_x, train_y, test_x, test_y, k=20)
  probe = evaluate.linear_probe_fractions(train_x, train_y, test_x, test_y, fractions=(1.0, 0.1))
  moved = evaluate.transfer(train_x, train_y, test_x, test_y)
  fn = evaluate.false_negative_precision_recall(train_x, train_y, np.full(len(train_y), 2.0))
  lam_err = evaluate.lambda_error(np.float32([0.3, 0.4]), np.float32([0.35, 0.4]))
  results = evaluate.build_results(knn=knn, linear_probe=probe, transfer={"blobs": moved},
                                   false_negatives=fn, lambda_error=lam_err,
                                   meta={"epoch": np.int64(3), "alpha": np.float32(0.01)})
  assert results["false_negatives"]["precision"] is None  # NaN -> null
  path = evaluate.write_results(results, tmp_path / "work")
  assert path.name == "results.json"

  def no_constants(name):
    raise AssertionError(f"non-standard JSON constant {name}")

  strict = json.loads(path.read_text(), parse_constant=no_constants)
  assert strict == results
  assert evaluate.read_results(tmp_path / "work") == results
  assert set(results) == {"knn", "linear_probe", "transfer", "false_negatives", "lambda_error",
                          "meta"}

  table = evaluate.format_table(results)
  assert "kNN top-1 (k=20, T=0.1)" in table and "kNN top-5" in table
  assert "Linear probe, 100% labels" in table and "Linear probe, 10% labels" in table
  assert "Transfer to blobs" in table
  assert "FN precision" in table and "n/a" in table
  assert "Lambda mean |lam - exact|" in table
  assert f"{100 * knn['top1']:.2f}%" in table
  assert "chance" not in table and "(CLIP)" not in table
  assert evaluate.format_table({}) == "No evaluation results."


def test_one_table_prints_image_text_sections_with_chance():
  from glofnd_jax.evaluation import retrieval as retrieval_lib  # pylint: disable=g-import-not-at-top
  from glofnd_jax.evaluation import zero_shot as zero_shot_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(43)
  image, text = rng.normal(size=(12, 4)), rng.normal(size=(12, 4))
  tokens = rng.integers(1, 4, size=(12, 2))
  labels = np.arange(12) % 6
  class_text = _normalized(rng.normal(size=(6, 4)))
  fn = evaluate.false_negative_precision_recall(image, labels, np.full(12, 2.0), candidates=text)
  results = evaluate.build_results(
      retrieval=retrieval_lib.retrieval(image, text, tokens, ks=(1, 5)),
      zero_shot=zero_shot_lib.zero_shot(image, labels, class_text),
      false_negatives={"image": fn, "text": fn}, meta={"temperature": np.float32(0.05)})
  assert list(results) == ["retrieval", "zero_shot", "false_negatives", "meta"]
  table = evaluate.format_table(results)
  lines = table.splitlines()
  assert lines[0] == "Evaluation results (CLIP)" and lines[2].split() == ["value", "chance"]
  assert "Zero-shot top-1 (6 classes, 12 images)" in table and "16.67%" in table  # chance 1/6
  assert "image->text R@1" in table and "text->image median rank" in table
  assert "FN precision, image anchors (lambda rule, train)" in table and "n/a" in table
  assert "Temperature (final)" in table and "0.0500" in table
  assert len({len(line) for line in lines[1:]}) <= 2  # fixed-width rows


def test_last_epoch_detector_averages_the_last_epoch(tmp_path):
  rows = [{"step": s, "train/loss": 1.0} for s in (1, 2)]
  rows += [{"step": s, "detector/img/fn_precision": s / 10, "detector/img/kept_fraction": 0.5,
            "detector/img/fn_recall": 0.2, "detector/txt/fn_recall": 0.4,
            "detector/txt/kept_fraction": 0.9} for s in (3, 4, 5, 6)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert evaluate.last_epoch_detector(tmp_path, 2) == pytest.approx(
      {"fn_precision": 0.55, "kept_fraction": 0.5, "fn_recall": 0.2})  # steps 5 and 6
  sides = evaluate.last_epoch_detector(tmp_path, 3, sides=("img", "txt"), name_sides=True)
  assert sides == pytest.approx({"img/fn_precision": 0.5, "img/fn_recall": 0.2,
                                 "img/kept_fraction": 0.5, "txt/fn_recall": 0.4,
                                 "txt/kept_fraction": 0.9})
  assert evaluate.last_epoch_detector(tmp_path, 2, sides=("nothing",)) == {}
