"""Evaluation on feature arrays, independent of any model.

* :mod:`~glofnd_jax.evaluation.features`         frozen-network feature extraction to numpy.
* :mod:`~glofnd_jax.evaluation.knn`              weighted kNN accuracy (cosine, k, T).
* :mod:`~glofnd_jax.evaluation.linear_probe`     linear probe at label fractions; transfer.
* :mod:`~glofnd_jax.evaluation.false_negatives`  precision/recall of ``s_ij > lam_i`` vs labels.
* :mod:`~glofnd_jax.evaluation.quantile`         exact dataset-wide quantile; lambda error.
* :mod:`~glofnd_jax.evaluation.report`           ``results.json`` and the printed table.
"""

from glofnd_jax.evaluation.false_negatives import false_negative_precision_recall
from glofnd_jax.evaluation.features import extract_features, frozen_feature_fn
from glofnd_jax.evaluation.knn import knn_classify
from glofnd_jax.evaluation.linear_probe import (
    class_balanced_subset,
    linear_probe_fractions,
    split_validation,
    transfer,
)
from glofnd_jax.evaluation.quantile import dataset_quantile, lambda_error
from glofnd_jax.evaluation.report import build_results, format_table, read_results, write_results
