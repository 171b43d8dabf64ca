"""Precision and recall of a per-anchor threshold rule as a false-negative detector.

A pair (i, j), i != j, is *flagged* when ``s_ij > lam_i`` (the anchor's threshold, exactly the
rule GloFND's mask applies) and is a *true* false negative when ``label_i == label_j``. Here
``s_ij`` is the similarity of anchor i's features to candidate j's: the same features for a
unimodal run (so i != j excludes self-similarity), the other modality's for an image-text run
(image i against caption j; i != j excludes the positive pair). Over all ordered pairs of the
chosen anchors with every other sample:

    precision = |flagged and same class| / |flagged|
    recall    = |flagged and same class| / |same-class pairs|

Similarities are computed chunk by chunk over anchors (``O(chunk_size x N)`` memory) in float32
with HIGHEST matmul precision, since a comparison with lambda is a discontinuity.

Which features: the representation whose similarities lambda was learned on (the L2-normalised
projection-head output), of un-augmented samples; see :mod:`glofnd_jax.evaluation.quantile`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import similarity


@jax.jit
def _chunk_counts(features, candidates, labels, anchor_index, anchor_valid, lam_rows):
  """Counts for one chunk of anchors against all samples.

  Args:
    features: ``(N, d)`` normalised anchor features.
    candidates: ``(N, d)`` normalised candidate features (``features`` itself when same-modal).
    labels: ``(N,)`` int labels.
    anchor_index: ``(Q,)`` int global index of each anchor of the chunk.
    anchor_valid: ``(Q,)`` bool, False on padding rows.
    lam_rows: ``(Q,)`` thresholds of the anchors.

  Returns:
    ``(flagged, true_flagged, same_class)``, each ``(Q,)`` int32 (zero on padding rows).
  """
  sims = similarity.cosine(features[anchor_index], candidates)  # (Q, N)
  others = (anchor_index[:, None] != jnp.arange(candidates.shape[0])[None, :])
  others = others & anchor_valid[:, None]
  same = (labels[anchor_index][:, None] == labels[None, :]) & others
  flagged = (sims > lam_rows[:, None]) & others
  count = lambda mask: jnp.sum(mask, axis=1, dtype=jnp.int32)
  return count(flagged), count(flagged & same), count(same)


def false_negative_precision_recall(features, labels, lam, *, candidates=None, anchors=None,
                                    chunk_size: int = 512, normalize: bool = True) -> dict:
  """False-negative detection quality of the rule ``s_ij > lam_i`` against class labels.

  Args:
    features: ``(N, d)`` numpy or jax array of the anchors (normalised here unless
      ``normalize=False``).
    labels: ``(N,)`` ints (sample i's, shared by its anchor and candidate features).
    lam: ``(N,)`` per-sample thresholds (anchor i uses ``lam[i]``).
    candidates: optional ``(N, d)`` features that anchor i is compared with (row j: sample j's
      other modality); default ``features`` (same-modal).
    anchors: optional ``(M,)`` indices of the anchors to evaluate (default: all N); each is still
      compared with all N - 1 other samples.
    chunk_size: anchors per jitted call.
    normalize: L2-normalise the features (and candidates) first. Pass False for features that
      already are, to compare exactly the values the caller computed.

  Returns:
    ``{"precision", "recall", "num_flagged", "num_true_flagged", "num_same_class_pairs",
    "num_pairs", "flagged_fraction"}``. Precision is NaN when nothing is flagged, recall NaN when
    there are no same-class pairs (the report writes NaN as JSON null).
  """
  labels = np.asarray(labels).reshape(-1)
  lam = np.asarray(lam, np.float32).reshape(-1)
  num_samples = labels.shape[0]
  same_modal = candidates is None
  candidates = features if same_modal else candidates
  if len({np.shape(features)[0], np.shape(candidates)[0], lam.shape[0], num_samples}) != 1:
    raise ValueError("false_negative_precision_recall: features, candidates, labels and lam need "
                     f"the same N; got {np.shape(features)[0]}, {np.shape(candidates)[0]}, "
                     f"{num_samples}, {lam.shape[0]}.")
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size!r} must be >= 1.")
  anchors = np.arange(num_samples) if anchors is None else np.asarray(anchors).reshape(-1)

  prepare = lambda x: (similarity.l2_normalize(jnp.asarray(x, jnp.float32)) if normalize
                       else jnp.asarray(x, jnp.float32))
  features = prepare(features)
  candidates = features if same_modal else prepare(candidates)
  _, label_ids = np.unique(labels, return_inverse=True)
  label_ids = jnp.asarray(label_ids, jnp.int32)

  chunk_size = max(1, min(chunk_size, len(anchors)))
  totals = np.zeros(3, np.int64)  # int64 on the host: the pair counts can exceed 2**31
  for start in range(0, len(anchors), chunk_size):
    index = anchors[start:start + chunk_size]
    valid = np.ones(chunk_size, bool)
    valid[len(index):] = False
    index = np.pad(index, (0, chunk_size - len(index)))  # one shape per call: one compilation
    counts = _chunk_counts(features, candidates, label_ids, jnp.asarray(index, jnp.int32),
                           jnp.asarray(valid), jnp.asarray(lam[index]))
    totals += np.array([np.sum(np.asarray(c, np.int64)) for c in counts])

  flagged, true_flagged, same_class = (int(v) for v in totals)
  num_pairs = len(anchors) * (num_samples - 1)
  return {
      "precision": true_flagged / flagged if flagged else float("nan"),
      "recall": true_flagged / same_class if same_class else float("nan"),
      "num_flagged": flagged,
      "num_true_flagged": true_flagged,
      "num_same_class_pairs": same_class,
      "num_pairs": num_pairs,
      "flagged_fraction": flagged / num_pairs if num_pairs else float("nan"),
  }


def per_sample_lambda(lam, num_samples: int) -> np.ndarray:
  """``(num_samples,)`` numpy thresholds from a state's ``lam``.

  A shared threshold (``(1,)``, mode glofnd_shared) is broadcast to every sample; a per-sample
  one is cut to the dataset's rows.
  """
  lam = np.asarray(jax.device_get(lam))
  return np.broadcast_to(lam, (num_samples,)) if lam.shape == (1,) else lam[:num_samples]
