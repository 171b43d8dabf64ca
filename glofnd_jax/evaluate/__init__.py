"""Evaluation on feature arrays, independent of any model.

* :mod:`~glofnd_jax.evaluate.features`         frozen-network feature extraction to numpy.
* :mod:`~glofnd_jax.evaluate.knn`              weighted kNN accuracy (cosine, k, T).
* :mod:`~glofnd_jax.evaluate.linear_probe`     linear probe at label fractions; transfer.
* :mod:`~glofnd_jax.evaluate.false_negatives`  precision/recall of ``s_ij > lam_i`` vs labels.
* :mod:`~glofnd_jax.evaluate.quantile`         exact dataset-wide quantile; lambda error.
* :mod:`~glofnd_jax.evaluate.report`           ``results.json`` and the printed table.
"""

from glofnd_jax.evaluate.false_negatives import false_negative_precision_recall
from glofnd_jax.evaluate.features import extract_features, frozen_feature_fn
from glofnd_jax.evaluate.knn import knn_classify
from glofnd_jax.evaluate.linear_probe import (class_balanced_subset, linear_probe_fractions,
                                              split_validation, transfer)
from glofnd_jax.evaluate.quantile import dataset_quantile, lambda_error
from glofnd_jax.evaluate.report import build_results, format_table, read_results, write_results
