"""End-of-run evaluation of a CLIP model: zero-shot, retrieval, false-negative detection.

With the frozen model on un-augmented images (:func:`glofnd_jax.augment.eval_view`):

* **zero-shot classification**: each class's prompts (``eval.zeroshot_templates`` filled with
  its name) are embedded, normalised and averaged (CLIP's prompt ensembling); an image gets the
  class of highest cosine similarity. On the held-out pairs' labels, or on a classification
  dataset (``eval.zeroshot_dataset``).
* **retrieval** on the held-out pairs (``data.test_split``): image->text and text->image
  recall@K and median / mean rank. Identical captions are one caption: an image's correct
  caption is its caption text, a caption's correct images are all images carrying that text
  (with templated captions many images share one). Each metric comes with its chance level
  (the expectation under a random ranking), printed next to it.
* **false negatives** (training pairs, when every pair has a class label): the learned rule
  ``s(x_i, t_j) > lambda^img_i`` (image anchors) and ``s(t_i, x_j) > lambda^txt_i`` (text
  anchors) over pairs ``i != j``, judged by ``label_i == label_j``; and the in-training detector's
  precision/recall over the last epoch (from ``metrics.jsonl``).

Writes ``results.json`` (:func:`glofnd_jax.evaluation.report.write_results`) and prints a table.
The keys are listed in ``docs/BIMODAL.md``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import data as data_lib
from glofnd_jax import evaluation as ev
from glofnd_jax import similarity
from glofnd_jax.data import pairs
from glofnd_jax.models.clip import CLIP
from glofnd_jax.training.metrics import read_metrics

# ----------------------------------------------------------------------------- features


def _variables(state):
  return jax.lax.stop_gradient({"params": state.params, "batch_stats": state.batch_stats})


def pair_embedder(run):
  """Jitted ``(variables, images, tokens) -> (image features, text features)`` (eval mode)."""

  def embed(variables, images, text):
    views = augment_lib.eval_view(images, run.augment)
    return (run.model.apply(variables, views, train=False, method=CLIP.encode_image),
            run.model.apply(variables, text, method=CLIP.encode_text))

  return jax.jit(embed)


def embed_pairs(run, state, source, embed=None) -> dict[str, np.ndarray]:
  """Image and text features of every pair of ``source``, in source order.

  Args:
    embed: from :func:`pair_embedder` (reuse it across calls: one compilation).

  Returns:
    ``{'image': (M, E), 'text': (M, E)`` float32, ``'tokens': (M, L)`` int32, ``'keys'``,
    ``'labels'`` ``(M,)``}.
  """
  c = run.config
  embed = embed or pair_embedder(run)
  batch_size = min(c.eval.batch_size, max(len(source), 1))
  iterator = pairs.make_pair_iterator(
      source, run.tokenizer, global_batch_size=batch_size, shuffle=False, drop_remainder=False,
      num_epochs=1, image_size=c.data.image_size, channels=c.data.channels,
      resize_mode=c.data.resize_mode, process_index=0, process_count=1, read_threads=1)
  variables = _variables(state)
  out = {name: [] for name in ("image", "text", "tokens", "keys", "labels")}
  for batch in iterator:
    keep = batch["index_img"] >= 0  # the last batch is padded with key -1
    img, txt = jax.device_get(embed(variables, batch["image"], batch["text"]))
    for name, value in (("image", img), ("text", txt), ("tokens", batch["text"]),
                        ("keys", batch["index_img"]), ("labels", batch["label"])):
      out[name].append(np.asarray(value)[keep])
  return {name: np.concatenate(values) for name, values in out.items()}


def _normalize(x: np.ndarray) -> np.ndarray:
  return np.asarray(similarity.l2_normalize(jnp.asarray(x, jnp.float32)))


# ----------------------------------------------------------------------------- zero-shot


def class_embeddings(run, state, class_names, templates) -> np.ndarray:
  """``(C, E)`` normalised mean of each class's normalised prompt embeddings."""
  if not class_names:
    raise ValueError("zero-shot needs class names: set eval.zeroshot_class_names.")
  if not templates or any("{}" not in t for t in templates):
    raise ValueError(f"eval.zeroshot_templates={tuple(templates)!r}: give at least one template, "
                     "each with '{}' where the class name goes.")
  tokens = run.tokenizer.encode_batch([t.format(name) for name in class_names
                                       for t in templates])
  encode = jax.jit(lambda v, t: run.model.apply(v, t, method=CLIP.encode_text))
  text = _normalize(jax.device_get(encode(_variables(state), tokens)))
  text = text.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return _normalize(text)


def zero_shot(image_features: np.ndarray, labels: np.ndarray,
              class_text: np.ndarray) -> dict:
  """Accuracy of ``argmax_c cos(image, class_text[c])``; top-5 with at least 5 classes."""
  labels = np.asarray(labels)
  num_classes = class_text.shape[0]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"zero-shot labels span [{labels.min()}, {labels.max()}] but there are "
                     f"{num_classes} class names.")
  scores = _normalize(image_features) @ class_text.T
  ranked = np.argsort(-scores, axis=1)
  result = {"top1": float(np.mean(ranked[:, 0] == labels)), "num_classes": int(num_classes),
            "num_images": int(len(labels)), "chance_top1": 1.0 / num_classes}
  if num_classes >= 5:
    result["top5"] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))
    result["chance_top5"] = 5.0 / num_classes
  return result


# ----------------------------------------------------------------------------- retrieval


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

  Returns:
    ``{"image_to_text": ..., "text_to_image": ..., "num_pairs", "num_unique_captions"}``; each
    direction ``{"R@K", "median_rank", "mean_rank", "num_queries", "num_gallery", "chance"}``.
    Rank is 1-based: 1 + the number of wrong items scored strictly higher than the best correct
    one.
  """
  image = _normalize(image_features)
  text = _normalize(text_features)
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


# ----------------------------------------------------------------------------- false negatives


def cross_modal_false_negatives(anchors: np.ndarray, candidates: np.ndarray, labels: np.ndarray,
                                lam: np.ndarray, chunk: int = 512) -> dict:
  """Precision/recall of ``s(anchor_i, candidate_j) > lam_i`` over ``i != j`` vs same label.

  Args:
    anchors, candidates: ``(M, E)`` features (pair i's anchor and candidate modality).
    labels: ``(M,)`` class labels.
    lam: ``(M,)`` each anchor's threshold.

  Returns:
    The keys of :func:`glofnd_jax.evaluation.false_negative_precision_recall`.
  """
  anchors, candidates = _normalize(anchors), _normalize(candidates)
  labels = np.asarray(labels)
  flagged = true_flagged = same_class = 0
  num = len(labels)
  for start in range(0, num, chunk):
    rows = np.arange(start, min(start + chunk, num))
    scores = np.asarray(similarity.cosine(jnp.asarray(anchors[rows]), jnp.asarray(candidates)))
    others = rows[:, None] != np.arange(num)[None, :]
    same = (labels[rows][:, None] == labels[None, :]) & others
    flags = (scores > lam[rows][:, None]) & others
    flagged += int(flags.sum())
    true_flagged += int((flags & same).sum())
    same_class += int(same.sum())
  pairs_total = num * (num - 1)
  return {"precision": true_flagged / flagged if flagged else float("nan"),
          "recall": true_flagged / same_class if same_class else float("nan"),
          "num_flagged": flagged, "num_true_flagged": true_flagged,
          "num_same_class_pairs": same_class, "num_pairs": pairs_total,
          "flagged_fraction": flagged / pairs_total if pairs_total else float("nan")}


def _last_epoch_detector(run) -> dict:
  rows = [r for r in read_metrics(run.workdir) if "img/kept_fraction" in r]
  tail = [r for r in rows if r["step"] > rows[-1]["step"] - run.steps_per_epoch] if rows else []
  if not tail:
    return {}
  keys = [f"{side}/{name}" for side in ("img", "txt") for name in
          ("fn_precision", "fn_recall", "kept_fraction", "flagged_fraction")]
  return {key: float(np.mean([r[key] for r in tail])) for key in keys if key in tail[0]}


# ----------------------------------------------------------------------------- the run


def _zero_shot_images(run, state, test_features, test_source):
  """``(image features, labels, class names)`` of the zero-shot set, or None when unavailable."""
  c = run.config
  names = list(c.eval.zeroshot_class_names)
  if not c.eval.zeroshot_dataset:
    if test_features is None or not (test_features["labels"] >= 0).all():
      return None
    names = names or list(getattr(test_source, "class_names", None) or [])
    if not names:
      print("zero-shot skipped: the test pairs have labels but no class names are known; set "
            "config.eval.zeroshot_class_names (one per label, in label order).")
      return None
    return test_features["image"], test_features["labels"], names
  source = data_lib.get_source(c.eval.zeroshot_dataset, c.eval.zeroshot_split,
                               data_dir=c.eval.zeroshot_data_dir or None, workdir=run.workdir)
  names = names or list(getattr(source, "class_names", None) or [])

  @jax.jit
  def embed(variables, images):
    views = augment_lib.eval_view(images, run.augment)
    return run.model.apply(variables, views, train=False, method=CLIP.encode_image)

  iterator = data_lib.make_iterator(
      source, global_batch_size=min(c.eval.batch_size, len(source)), shuffle=False,
      drop_remainder=False, num_epochs=1, image_size=c.data.image_size, channels=c.data.channels,
      process_index=0, process_count=1)
  feats, labels = [], []
  variables = _variables(state)
  for batch in iterator:
    keep = batch["index"] >= 0
    feats.append(np.asarray(jax.device_get(embed(variables, batch["image"])))[keep])
    labels.append(batch["label"][keep])
  return np.concatenate(feats), np.concatenate(labels), names


def evaluate_clip_run(run, state) -> dict:
  """Evaluate ``state`` of an image-text task (:class:`~glofnd_jax.training.image_text.ClipRun`);
  write and print results."""
  c = run.config
  results: dict = {}
  test_source, _ = run.open_split("test")
  embed = pair_embedder(run)
  test = embed_pairs(run, state, test_source, embed) if test_source is not None else None
  if test is not None:
    results["retrieval"] = retrieval(test["image"], test["text"], test["tokens"],
                                     ks=tuple(c.eval.retrieval_ks))
  zs = _zero_shot_images(run, state, test, test_source)
  if zs is not None:
    images, labels, names = zs
    class_text = class_embeddings(run, state, names, tuple(c.eval.zeroshot_templates))
    results["zero_shot"] = {**zero_shot(images, labels, class_text),
                            "dataset": c.eval.zeroshot_dataset or f"{c.data.name} test pairs",
                            "templates": list(c.eval.zeroshot_templates)}
  if run.source.has_labels and c.glofnd.mode in ("glofnd", "glofnd_shared"):
    source = run.source
    if len(source) > c.eval.fn_max_samples:
      rng = np.random.default_rng(c.seed)
      chosen = np.sort(rng.choice(len(source), c.eval.fn_max_samples, replace=False))
      source = pairs.SubsetSource(source, chosen)
    train = embed_pairs(run, state, source, embed)
    sections = {}
    for side, anchors, candidates, thresholds in (
        ("image", train["image"], train["text"], state.per_sample.thresholds_img),
        ("text", train["text"], train["image"], state.per_sample.thresholds_txt)):
      lam = np.asarray(jax.device_get(thresholds[0].lam))
      lam = np.broadcast_to(lam, (run.num_samples,)) if lam.shape == (1,) else lam
      sections[side] = cross_modal_false_negatives(anchors, candidates, train["labels"],
                                                   lam[train["keys"]])
    results["false_negatives"] = sections
  results["meta"] = {
      "config": c.to_dict(), "num_train_pairs": run.num_records, "data_size": run.num_samples,
      "num_test_pairs": 0 if test is None else int(len(test["keys"])),
      "train_bad_samples": {k: run.screen_report[k]["count"]
                            for k in ("unusable", "empty_captions", "bad_images")},
      "temperature": float(1.0 / np.exp(np.asarray(jax.device_get(state.params["logit_scale"])))),
      "train_detector_last_epoch": _last_epoch_detector(run)}
  if jax.process_index() == 0:
    ev.write_results(results, run.workdir)
    print(format_table(results))
  return results


def _pct(value) -> str:
  return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
      else f"{100.0 * value:.2f}%"


def format_table(results: dict) -> str:
  """The printed table: metric, value, chance level."""
  rows = []
  zs = results.get("zero_shot")
  if zs:
    rows.append((f"Zero-shot top-1 ({zs['num_classes']} classes, {zs['num_images']} images)",
                 _pct(zs["top1"]), _pct(zs["chance_top1"])))
    if "top5" in zs:
      rows.append(("Zero-shot top-5", _pct(zs["top5"]), _pct(zs["chance_top5"])))
  rt = results.get("retrieval")
  if rt:
    for direction, label in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
      entry = rt[direction]
      for key in entry:
        if key.startswith("R@"):
          rows.append((f"{label} {key} ({entry['num_queries']} queries, {entry['num_gallery']} "
                       "candidates)", _pct(entry[key]), _pct(entry["chance"][key])))
      rows.append((f"{label} median rank", f"{entry['median_rank']:g}",
                   f"{entry['chance']['median_rank']:g}"))
  for side, entry in (results.get("false_negatives") or {}).items():
    rows.append((f"FN precision, {side} anchors (lambda rule, train)", _pct(entry["precision"]),
                 ""))
    rows.append((f"FN recall, {side} anchors", _pct(entry["recall"]), ""))
    rows.append((f"FN flagged pairs, {side} anchors", _pct(entry["flagged_fraction"]), ""))
  meta = results.get("meta", {})
  if "temperature" in meta:
    rows.append(("Temperature (final)", f"{meta['temperature']:.4f}", ""))
  if not rows:
    return "No evaluation results."
  width = max(len(r[0]) for r in rows)
  value_width = max(len(r[1]) for r in rows)
  rule = "-" * (width + value_width + 14)
  lines = ["Evaluation results (CLIP)", rule,
           f"{'':<{width}}  {'value':>{value_width}}  {'chance':>10}", rule]
  lines += [f"{name:<{width}}  {value:>{value_width}}  {chance:>10}"
            for name, value, chance in rows]
  lines.append(rule)
  return "\n".join(lines)
