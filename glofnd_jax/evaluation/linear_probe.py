"""Linear probe on frozen features at label fractions, and transfer by logistic regression.

Protocol (semi-supervised linear evaluation, as SimCLR's 1%/10% label tables):

1. Validation: if no validation set is passed, a stratified ``val_fraction`` of the training
   features is held out (seeded). The rest is the training *pool*. The test set plays no part in
   any choice: it is used once per fraction, after C is fixed, for the reported accuracy.
2. Standardisation: mean and std are fitted on the pool's features (no labels used) and applied
   to the labelled subset, validation and test.
3. For each label fraction f, a class-balanced subset of the pool is drawn: every class keeps
   ``max(1, round(f * n_c))`` of its ``n_c`` pool examples (capped at ``n_c``). One seeded
   permutation per class is cut at these sizes, so smaller fractions are subsets of larger ones.
4. Multinomial logistic regression (scikit-learn ``LogisticRegression``, lbfgs, which is
   multinomial for more than two classes; BLAS on one thread, so the result does not depend on
   the machine's core count) is fitted on the subset for each C of ``c_grid``; the C
   with the best validation accuracy wins (ties: the smaller C, the stronger regularisation).
5. The winning model is scored on the test features.

Validation labels are used at every fraction (the usual practice for these tables); at 1% with
one example per class nothing smaller could be held out.

Features come from :func:`glofnd_jax.evaluation.features.extract_features`; this module only sees
arrays and has no access to any network.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

DEFAULT_FRACTIONS = (1.0, 0.1, 0.01)
DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0)


def fraction_key(fraction: float) -> str:
  """The results key of a label fraction: ``1.0 -> "1"``, ``0.1 -> "0.1"``, ``0.01 -> "0.01"``."""
  return f"{fraction:g}"


def _per_class_permutations(labels: np.ndarray, seed: int) -> dict:
  """``{class: indices of that class in a seeded random order}``."""
  rng = np.random.default_rng(seed)
  return {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def _round_half_up(x: float) -> int:
  return int(math.floor(x + 0.5))


def class_balanced_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
  """Sorted indices of a class-balanced, seeded subset: ``max(1, round(fraction * n_c))`` per class.

  Args:
    labels: ``(N,)`` ints.
    fraction: in (0, 1].
    seed: the same seed gives nested subsets for decreasing fractions.

  Returns:
    ``(n,)`` int64 indices into ``labels``, ascending.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"label fraction {fraction!r} must lie in (0, 1].")
  labels = np.asarray(labels).reshape(-1)
  chosen = []
  for order in _per_class_permutations(labels, seed).values():
    count = min(len(order), max(1, _round_half_up(fraction * len(order))))
    chosen.append(order[:count])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def split_validation(labels, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Stratified (pool, validation) split of ``range(N)``, both sorted.

  Each class with at least 2 examples gives ``max(1, round(val_fraction * n_c))`` of them
  (at most ``n_c - 1``) to validation, so every class stays in the pool.
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction!r} must lie in (0, 1).")
  labels = np.asarray(labels).reshape(-1)
  pool, val = [], []
  # A seed distinct from the subset draw's, so the two random choices are independent.
  for order in _per_class_permutations(labels, seed + 1_000_003).values():
    count = 0 if len(order) < 2 else min(len(order) - 1,
                                          max(1, _round_half_up(val_fraction * len(order))))
    val.append(order[:count])
    pool.append(order[count:])
  return np.sort(np.concatenate(pool)), np.sort(np.concatenate(val))


def _fit(x, y, c: float, max_iter: int, seed: int,
         blas_threads: int | None = 1) -> tuple[LogisticRegression, bool]:
  """One logistic regression; returns it and whether lbfgs converged.

  BLAS runs on ``blas_threads`` threads (None: BLAS's own count), by default one: a threaded
  BLAS sums in an order that depends on the thread count, so lbfgs would take another path (and
  give another accuracy) on a machine with other cores; and beside training jobs its spinning
  threads made the small fits ~15x slower (45 s instead of 3 s for 3,600 x 256 features, 62
  classes).
  """
  model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=seed)
  with warnings.catch_warnings(), threadpool_limits(limits=blas_threads, user_api="blas"):
    # Non-convergence is reported in the results instead of as a warning per fit.
    warnings.simplefilter("ignore", ConvergenceWarning)
    model.fit(x, y)
  return model, bool(np.all(model.n_iter_ < max_iter))


def select_c(train_x, train_y, val_x, val_y, c_grid=DEFAULT_C_GRID, max_iter: int = 1000,
             seed: int = 0, blas_threads: int | None = 1
             ) -> tuple[LogisticRegression, float, list[float], bool]:
  """Fits one model per C and keeps the best on validation. Sees no test data by construction.

  Args:
    train_x, train_y: ``(n, d)`` standardised features and ``(n,)`` labels of the labelled subset.
    val_x, val_y: ``(v, d)`` and ``(v,)`` validation set.
    c_grid: inverse regularisation strengths to try.
    max_iter: lbfgs iteration cap.
    seed: passed to scikit-learn.
    blas_threads: BLAS threads per fit (see ``_fit``).

  Returns:
    (best model, its C, validation accuracy per C in grid order, whether the best model converged).
  """
  if len(c_grid) == 0:
    raise ValueError("c_grid must hold at least one value of C.")
  # Ascending C with a strict '>' below: ties keep the smaller C (stronger regularisation).
  best = None
  val_accuracies = {}
  for c in sorted(c_grid):
    model, converged = _fit(train_x, train_y, c, max_iter, seed, blas_threads)
    accuracy = float(np.mean(model.predict(val_x) == val_y))
    val_accuracies[c] = accuracy
    if best is None or accuracy > best[2]:
      best = (model, float(c), accuracy, converged)
  model, c, _, converged = best
  return model, c, [val_accuracies[c] for c in c_grid], converged


def linear_probe_fractions(train_features, train_labels, test_features, test_labels, *,
                 fractions=DEFAULT_FRACTIONS, val_features=None, val_labels=None,
                 val_fraction: float = 0.1, c_grid=DEFAULT_C_GRID, max_iter: int = 1000,
                 seed: int = 0, blas_threads: int | None = 1) -> dict:
  """Test accuracy of a linear classifier on frozen features, per label fraction.

  Args:
    train_features: ``(N, d)`` numpy or jax array of training-set features.
    train_labels: ``(N,)`` ints.
    test_features: ``(M, d)``.
    test_labels: ``(M,)``.
    fractions: label fractions in (0, 1] of the training pool.
    val_features, val_labels: an explicit validation set; if omitted, ``val_fraction`` of the
      training features is held out (stratified, seeded) and never used for fitting.
    val_fraction: share of the training set held out when no validation set is given.
    c_grid: logistic-regression C values tried on validation.
    max_iter: lbfgs iteration cap.
    seed: seeds the validation split, the subsets and scikit-learn.
    blas_threads: BLAS threads per fit; 1 (the default) makes the result independent of the
      machine's core count (see ``_fit``).

  Returns:
    ``{fraction_key(f): entry}`` in the order of ``fractions``, each entry
    ``{"label_fraction", "accuracy", "num_labeled", "num_val", "num_test", "c", "c_grid",
    "val_accuracies", "val_accuracy", "converged"}``: test accuracy in [0, 1], labelled examples
    used, validation and test sizes, the chosen C, the grid and validation accuracy per C, the
    chosen C's validation accuracy, and whether lbfgs converged for it.
  """
  train_x = np.asarray(train_features, np.float32)
  train_y = np.asarray(train_labels).reshape(-1)
  test_x = np.asarray(test_features, np.float32)
  test_y = np.asarray(test_labels).reshape(-1)
  if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
    raise ValueError("linear_probe_fractions: features and labels disagree on the number of "
                     "samples.")
  if (val_features is None) != (val_labels is None):
    raise ValueError("linear_probe_fractions: pass both val_features and val_labels, or neither.")

  if val_features is None:
    pool_index, val_index = split_validation(train_y, val_fraction, seed)
    val_x, val_y = train_x[val_index], train_y[val_index]
    pool_x, pool_y = train_x[pool_index], train_y[pool_index]
  else:
    val_x = np.asarray(val_features, np.float32)
    val_y = np.asarray(val_labels).reshape(-1)
    pool_x, pool_y = train_x, train_y
  if len(val_y) == 0:
    raise ValueError("linear_probe_fractions: the validation set is empty (every class has one "
                     "example?); pass val_features/val_labels.")

  scaler = StandardScaler().fit(pool_x)  # label-free statistics of the training pool
  pool_x, val_x, test_x = (scaler.transform(a) for a in (pool_x, val_x, test_x))

  results = {}
  for fraction in fractions:
    subset = class_balanced_subset(pool_y, fraction, seed)
    model, c, val_accuracies, converged = select_c(pool_x[subset], pool_y[subset], val_x, val_y,
                                                   c_grid, max_iter, seed, blas_threads)
    results[fraction_key(fraction)] = {
        "label_fraction": float(fraction),
        "accuracy": float(np.mean(model.predict(test_x) == test_y)),
        "num_labeled": int(len(subset)),
        "num_val": int(len(val_y)),
        "num_test": int(len(test_y)),
        "c": c,
        "c_grid": [float(v) for v in c_grid],
        "val_accuracies": val_accuracies,
        "val_accuracy": val_accuracies[list(c_grid).index(c)],
        "converged": converged,
    }
  return results


def transfer(train_features, train_labels, test_features, test_labels, *, val_features=None,
             val_labels=None, val_fraction: float = 0.1, c_grid=DEFAULT_C_GRID,
             max_iter: int = 1000, seed: int = 0) -> dict:
  """Logistic regression on another dataset's frozen features.

  The same code path as :func:`linear_probe_fractions` at 100% of the labels.

  Returns:
    One entry with the keys of a :func:`linear_probe_fractions` entry.
  """
  results = linear_probe_fractions(train_features, train_labels, test_features, test_labels,
                                   fractions=(1.0,), val_features=val_features,
                                   val_labels=val_labels, val_fraction=val_fraction,
                                   c_grid=c_grid, max_iter=max_iter, seed=seed)
  return results[fraction_key(1.0)]
