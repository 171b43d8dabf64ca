"""Evaluation of a frozen network: features to numpy once, then metrics on the arrays.

Building blocks (arrays in, dicts out; only ``features`` touches a model):

* :mod:`~glofnd_jax.evaluation.features`         the one embedding loop (frozen, to numpy).
* :mod:`~glofnd_jax.evaluation.knn`              weighted kNN accuracy (cosine, k, T).
* :mod:`~glofnd_jax.evaluation.linear_probe`     linear probe at label fractions; transfer.
* :mod:`~glofnd_jax.evaluation.retrieval`        image<->text recall@K, ranks, chance levels.
* :mod:`~glofnd_jax.evaluation.zero_shot`        prompt-ensemble class embeddings; accuracy.
* :mod:`~glofnd_jax.evaluation.false_negatives`  precision/recall of ``s_ij > lam_i`` vs labels,
  same-modal or cross-modal.
* :mod:`~glofnd_jax.evaluation.fn_examples`      anchors beside their nearest flagged and kept
  negatives (the pairs of ``false_negatives.png``).
* :mod:`~glofnd_jax.evaluation.quantile`         exact dataset-wide quantile; lambda error.
* :mod:`~glofnd_jax.evaluation.report`           ``results.json``, the printed table, the
  in-training detector's last epoch.

Run evaluators (a trained run's state in, ``results.json`` and the table out):

* :mod:`~glofnd_jax.evaluation.unimodal`         kNN, probes, transfer, FN, lambda error.
* :mod:`~glofnd_jax.evaluation.image_text`       zero-shot, retrieval, image/text-anchor FN.
"""

from glofnd_jax.evaluation.false_negatives import false_negative_precision_recall, per_sample_lambda
from glofnd_jax.evaluation.features import extract_features, frozen_feature_fn
from glofnd_jax.evaluation.fn_examples import ExamplePair, select_examples
from glofnd_jax.evaluation.knn import knn_classify
from glofnd_jax.evaluation.linear_probe import (
    class_balanced_subset,
    linear_probe_fractions,
    split_validation,
    transfer,
)
from glofnd_jax.evaluation.quantile import dataset_quantile, lambda_error
from glofnd_jax.evaluation.report import (
    build_results,
    format_table,
    last_epoch_detector,
    read_results,
    write_and_print,
    write_results,
)
