"""Image-text retrieval over held-out pairs, with each metric's chance level.

Image->text and text->image recall@K and median / mean rank on ``M`` pairs. Identical captions
are one caption: an image's correct caption is its caption text, a caption's correct images are
all images carrying that text (with templated captions many images share one). Chance levels are
the expectations under a random ranking.
"""

from __future__ import annotations

import math

import numpy as np

from glofnd_jax.evaluation.features import normalized


def _chance_recall(num_gallery: int, num_correct: np.ndarray, k: int) -> float:
  """Mean over queries of ``P(some correct item in a random top k)`` = 1 - C(G-g, k) / C(G, k)."""
  k = min(k, num_gallery)
  miss = [math.comb(num_gallery - int(g), k) / math.comb(num_gallery, k) for g in num_correct]
  return float(1.0 - np.mean(miss))


def _chance_first_rank(num_gallery: int, num_correct: int) -> float:
  """Expected rank of the first of ``g`` correct items in a random order of ``G``: (G+1)/(g+1)."""
  return (num_gallery + 1) / (num_correct + 1)


def _rank_summary(ranks: np.ndarray, ks, num_gallery: int, num_correct: np.ndarray) -> dict:
  out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
  out.update(median_rank=float(np.median(ranks)), mean_rank=float(np.mean(ranks)),
             num_queries=int(len(ranks)), num_gallery=int(num_gallery))
  out["chance"] = {f"R@{k}": _chance_recall(num_gallery, num_correct, k) for k in ks}
  out["chance"]["median_rank"] = float(np.median(
      [_chance_first_rank(num_gallery, int(g)) for g in num_correct]))
  return out


def retrieval(image_features: np.ndarray, text_features: np.ndarray, tokens: np.ndarray,
              ks=(1, 5, 10), chunk: int = 1024) -> dict:
  """Image->text and text->image retrieval over ``M`` pairs (identical captions grouped).

  Args:
    image_features, text_features: ``(M, E)`` features of pair i's image and caption.
    tokens: ``(M, L)`` token ids: rows that are equal are the same caption.
    ks: the K of recall@K.
    chunk: queries scored at a time (``O(chunk x gallery)`` memory).

  Returns:
    ``{"image_to_text": ..., "text_to_image": ..., "num_pairs", "num_unique_captions"}``; each
    direction ``{"R@K", "median_rank", "mean_rank", "num_queries", "num_gallery", "chance"}``.
    Rank is 1-based: 1 + the number of wrong items scored strictly higher than the best correct
    one.
  """
  image = normalized(image_features)
  text = normalized(text_features)
  _, first, group = np.unique(tokens, axis=0, return_index=True, return_inverse=True)
  group = group.reshape(-1)
  captions = text[first]  # (G, E): one embedding per distinct caption
  num_groups = len(first)
  group_size = np.bincount(group, minlength=num_groups)

  # image -> text: gallery = the distinct captions; the correct one is the image's own.
  ranks_i2t = []
  for start in range(0, len(image), chunk):
    scores = image[start:start + chunk] @ captions.T  # (q, G)
    correct = scores[np.arange(len(scores)), group[start:start + chunk]]
    ranks_i2t.append(1 + np.sum(scores > correct[:, None], axis=1))
  # text -> image: queries = the distinct captions; correct = every image carrying the caption.
  ranks_t2i = []
  for start in range(0, num_groups, chunk):
    scores = captions[start:start + chunk] @ image.T  # (q, M)
    is_correct = group[None, :] == np.arange(start, start + len(scores))[:, None]
    best = np.max(np.where(is_correct, scores, -np.inf), axis=1)
    ranks_t2i.append(1 + np.sum((scores > best[:, None]) & ~is_correct, axis=1))
  return {
      "image_to_text": _rank_summary(np.concatenate(ranks_i2t), ks, num_groups,
                                     np.ones(len(image), int)),
      "text_to_image": _rank_summary(np.concatenate(ranks_t2i), ks, len(image), group_size),
      "num_pairs": int(len(image)), "num_unique_captions": int(num_groups)}
