"""Examples of what the learned thresholds flag: a few anchors with their nearest flagged and
nearest kept negatives (the pairs ``false_negatives.png`` shows).

The rule is the one :mod:`~glofnd_jax.evaluation.false_negatives` scores: candidate j != i is
*flagged* for anchor i when ``s_ij > lam_i``, *kept* otherwise, with ``s`` the cosine of the
same (normalised) features, computed the same way (float32, HIGHEST precision), so a pair shown
as flagged is one counted as flagged there. Anchors are drawn with a fixed seed among those with
at least one flagged candidate: a seeded permutation is scanned chunk by chunk and the first
``num_anchors`` anchors that have one are taken (a uniform sample of those anchors), so only as
many similarity rows are computed as it takes to find them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import similarity

# What false_negatives.png shows: this many anchors, each with up to this many flagged and this
# many kept negatives.
PICTURE_ANCHORS = 6
PICTURE_PER_ANCHOR = 4


@dataclasses.dataclass(frozen=True)
class ExamplePair:
  """One anchor-candidate pair of the picture.

  Attributes:
    anchor, neighbour: indices into the features (the dataset's global indices).
    similarity: ``s_ij``.
    lam: the anchor's threshold ``lam_i``.
    flagged: ``s_ij > lam_i`` (a detected false negative; kept as a negative otherwise).
    same_class: ``label_i == label_j``; None when there are no labels.
  """

  anchor: int
  neighbour: int
  similarity: float
  lam: float
  flagged: bool
  same_class: bool | None


@jax.jit
def _rows(anchor_features, candidates):
  return similarity.cosine(anchor_features, candidates)


def select_examples(features, lam, labels=None, *, candidates=None,
                    num_anchors: int = PICTURE_ANCHORS, per_anchor: int = PICTURE_PER_ANCHOR,
                    seed: int = 0, chunk_size: int = 16,
                    normalize: bool = True) -> list[ExamplePair]:
  """Anchors with flagged candidates, each with its most similar flagged and kept candidates.

  Args:
    features: ``(N, d)`` anchor features (normalised here unless ``normalize=False``).
    lam: ``(N,)`` per-sample thresholds (anchor i uses ``lam[i]``).
    labels: optional ``(N,)`` class labels (negative values: unknown) for ``same_class``.
    candidates: optional ``(N, d)`` features anchor i is compared with (the other modality for
      an image-text run; j == i, the positive pair, is excluded); default ``features``.
    num_anchors: anchors to return (fewer when fewer have a flagged candidate).
    per_anchor: flagged pairs and kept pairs per anchor (each at most this many).
    seed: seeds the anchors' order.
    chunk_size: anchors whose similarity rows are computed per call.
    normalize: L2-normalise the features (and candidates) first.

  Returns:
    :class:`ExamplePair` rows grouped by anchor (in the order drawn); within an anchor its
    flagged pairs by decreasing similarity, then its kept ones by decreasing similarity.
  """
  lam = np.asarray(lam, np.float32).reshape(-1)
  num_samples = lam.shape[0]
  if np.shape(features)[0] != num_samples or (
      candidates is not None and np.shape(candidates)[0] != num_samples):
    raise ValueError("select_examples: features, candidates and lam need the same N; got "
                     f"{np.shape(features)[0]}, "
                     f"{None if candidates is None else np.shape(candidates)[0]}, {num_samples}.")
  if num_anchors < 0 or per_anchor < 1 or chunk_size < 1:
    raise ValueError(f"num_anchors={num_anchors}, per_anchor={per_anchor}, chunk_size="
                     f"{chunk_size}: need num_anchors >= 0 and per_anchor, chunk_size >= 1.")
  prepare = lambda x: (similarity.l2_normalize(jnp.asarray(x, jnp.float32)) if normalize
                       else jnp.asarray(x, jnp.float32))
  features = prepare(features)
  candidates = features if candidates is None else prepare(candidates)
  labels = None if labels is None else np.asarray(labels).reshape(-1)

  order = np.random.default_rng(seed).permutation(num_samples)
  chunk_size = min(chunk_size, num_samples)
  pairs, found = [], 0
  for start in range(0, num_samples, chunk_size):
    if found == num_anchors:
      break
    index = order[start:start + chunk_size]
    padded = np.pad(index, (0, chunk_size - len(index)))  # one shape per call: one compilation
    rows = np.asarray(_rows(features[padded], candidates))[:len(index)]
    for anchor, sims in zip(index, rows):
      sims = sims.copy()
      sims[anchor] = -np.inf  # never its own pair
      flagged = sims > lam[anchor]
      if not flagged.any():
        continue
      pairs += _anchor_pairs(int(anchor), sims, flagged, lam[anchor], labels, per_anchor)
      found += 1
      if found == num_anchors:
        break
  return pairs


def _anchor_pairs(anchor, sims, flagged, lam_i, labels, per_anchor):
  """The anchor's top ``per_anchor`` flagged then top ``per_anchor`` kept candidates."""
  by_similarity = np.argsort(-sims, kind="stable")
  by_similarity = by_similarity[by_similarity != anchor]
  is_flagged = flagged[by_similarity]
  chosen = np.concatenate([by_similarity[is_flagged][:per_anchor],
                           by_similarity[~is_flagged][:per_anchor]])
  known = labels is not None and labels[anchor] >= 0
  return [ExamplePair(anchor=anchor, neighbour=int(j), similarity=float(sims[j]), lam=float(lam_i),
                      flagged=bool(flagged[j]),
                      same_class=(bool(labels[anchor] == labels[j])
                                  if known and labels[j] >= 0 else None))
          for j in chosen]
