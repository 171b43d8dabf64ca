"""End-of-run evaluation of a CLIP model: zero-shot, retrieval, false-negative detection.

With the frozen model on un-augmented images (:func:`glofnd_jax.augment.eval_view`):

* **zero-shot classification** (:mod:`~glofnd_jax.evaluation.zero_shot`): class prompts
  (``eval.zeroshot_templates`` filled with each name) as the classifier, on the held-out pairs'
  labels or on a classification dataset (``eval.zeroshot_dataset``).
* **retrieval** (:mod:`~glofnd_jax.evaluation.retrieval`) on the held-out pairs
  (``data.test_split``): image->text and text->image recall@K and median / mean rank, each with
  its chance level (printed next to it).
* **false negatives** (training pairs, when every pair has a class label): the learned rule
  ``s(x_i, t_j) > lambda^img_i`` (image anchors) and ``s(t_i, x_j) > lambda^txt_i`` (text
  anchors) over pairs ``i != j``, judged by ``label_i == label_j``; and the in-training detector's
  precision/recall over the last epoch (from ``metrics.jsonl``). ``false_negatives.png`` shows a
  few image anchors beside the captions they flag and the most similar ones they keep
  (:mod:`~glofnd_jax.evaluation.fn_examples`, from the same features and thresholds).

Writes ``results.json`` (:func:`glofnd_jax.evaluation.report.write_results`) and prints a table.
The keys are listed in ``docs/BIMODAL.md``.
"""

from __future__ import annotations

import jax
import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import data as data_lib
from glofnd_jax import evaluation as ev
from glofnd_jax.data.decode import decode_image, resize_image
from glofnd_jax.data.pairs.contract import PairSubset
from glofnd_jax.data.pairs.pipeline import make_pair_iterator
from glofnd_jax.evaluation.features import state_variables
from glofnd_jax.evaluation.fn_examples import select_examples
from glofnd_jax.evaluation.retrieval import retrieval
from glofnd_jax.evaluation.zero_shot import class_embeddings, zero_shot
from glofnd_jax.models.clip import CLIP
from glofnd_jax.training.plots import FALSE_NEGATIVES_PLOT, draw_false_negatives

# ----------------------------------------------------------------------------- features


def _image_encoder(run):
  """``(variables, images) -> image features`` of the eval view (eval mode)."""

  def encode(variables, images):
    views = augment_lib.eval_view(images, run.augment)
    return run.model.apply(variables, views, train=False, method=CLIP.encode_image)

  return encode


def pair_embedder(run):
  """Jitted, frozen ``(variables, images, tokens) -> (image features, text features)``."""
  encode_image = _image_encoder(run)

  def embed(variables, images, text):
    return (encode_image(variables, images),
            run.model.apply(variables, text, method=CLIP.encode_text))

  return ev.frozen_feature_fn(embed)


def embed_pairs(run, state, source, embed=None) -> dict[str, np.ndarray]:
  """Image and text features of every pair of ``source``, in source order.

  Args:
    embed: from :func:`pair_embedder` (reuse it across calls: one compilation).

  Returns:
    ``{'image': (M, E), 'text': (M, E)`` float32, ``'tokens': (M, L)`` int32, ``'keys'``,
    ``'labels'`` ``(M,)``}.
  """
  c = run.config
  batch_size = min(c.eval.batch_size, max(len(source), 1))
  iterator = make_pair_iterator(
      source, run.tokenizer, global_batch_size=batch_size, shuffle=False, drop_remainder=False,
      num_epochs=1, image_size=c.data.image_size, channels=c.data.channels,
      resize_mode=c.data.resize_mode, process_index=0, process_count=1, read_threads=1)
  # The last batch is padded with key -1.
  (image, text), fields = ev.extract_features(
      embed or pair_embedder(run), state_variables(state), iterator, inputs=("image", "text"),
      valid="index_img", carry=("text", "index_img", "label"))
  return {"image": image, "text": text, "tokens": fields["text"], "keys": fields["index_img"],
          "labels": fields["label"]}


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
  iterator = data_lib.make_iterator(
      source, global_batch_size=min(c.eval.batch_size, len(source)), shuffle=False,
      drop_remainder=False, num_epochs=1, image_size=c.data.image_size, channels=c.data.channels,
      process_index=0, process_count=1)
  images, fields = ev.extract_features(_image_encoder(run), state_variables(state), iterator,
                                       inputs=("image",), carry=("label",))
  return images, fields["label"], names


def draw_examples(run, source, train, lam_img):
  """``false_negatives.png``: image anchors of ``source`` (positions of ``train``, the features
  :func:`embed_pairs` gave) beside the captions whose similarity passes their lambda
  (``lam_img``, per position) and the most similar ones that do not."""
  c = run.config
  pairs = select_examples(train["image"], lam_img, train["labels"], candidates=train["text"],
                          seed=c.seed)
  size = (c.data.image_size, c.data.image_size)

  def image(position):  # as the model saw it, before augmentation
    return resize_image(decode_image(source.read_image(position), c.data.channels), size)

  return draw_false_negatives(run.workdir / FALSE_NEGATIVES_PLOT, pairs, image,
                              neighbour_text=source.read_caption,
                              title=f"captions flagged for images, {c.data.name} train")


def evaluate_clip_run(run, state) -> dict:
  """Evaluate ``state`` of an image-text task (:class:`~glofnd_jax.training.image_text.ClipRun`);
  write and print results."""
  c = run.config
  test_source, _ = run.open_test_pairs()
  embed = pair_embedder(run)
  test = embed_pairs(run, state, test_source, embed) if test_source is not None else None
  retrieved = None
  if test is not None:
    retrieved = retrieval(test["image"], test["text"], test["tokens"],
                          ks=tuple(c.eval.retrieval_ks))
  zs = _zero_shot_images(run, state, test, test_source)
  zero_shot_result = None
  if zs is not None:
    images, labels, names = zs
    class_text = class_embeddings(run, state, names, tuple(c.eval.zeroshot_templates))
    zero_shot_result = {**zero_shot(images, labels, class_text),
                        "dataset": c.eval.zeroshot_dataset or f"{c.data.name} test pairs",
                        "templates": list(c.eval.zeroshot_templates)}
  false_negatives = None
  if run.source.has_labels and c.glofnd.mode in ("glofnd", "glofnd_shared"):
    source = run.source
    if len(source) > c.eval.fn_max_samples:
      rng = np.random.default_rng(c.seed)
      chosen = np.sort(rng.choice(len(source), c.eval.fn_max_samples, replace=False))
      source = PairSubset(source, chosen)
    train = embed_pairs(run, state, source, embed)
    false_negatives, lam = {}, {}
    for side, anchors, candidates, thresholds in (
        ("image", train["image"], train["text"], state.per_sample.thresholds_img),
        ("text", train["text"], train["image"], state.per_sample.thresholds_txt)):
      lam[side] = ev.per_sample_lambda(thresholds[0].lam, run.num_samples)[train["keys"]]
      false_negatives[side] = ev.false_negative_precision_recall(
          anchors, train["labels"], lam[side], candidates=candidates)
  meta = {
      "config": c.to_dict(), "num_train_pairs": run.num_records, "data_size": run.num_samples,
      "num_test_pairs": 0 if test is None else int(len(test["keys"])),
      "train_bad_samples": {k: run.screen_report[k]["count"]
                            for k in ("unusable", "empty_captions", "bad_images")},
      "train_damaged_shards": run.screen_report.get("damaged_shards", {"count": 0, "shards": []}),
      "temperature": float(1.0 / np.exp(np.asarray(jax.device_get(state.params["logit_scale"])))),
      "train_detector_last_epoch": ev.last_epoch_detector(
          run.workdir, run.steps_per_epoch, sides=run.detector_sides, name_sides=True)}
  results = ev.build_results(retrieval=retrieved, zero_shot=zero_shot_result,
                             false_negatives=false_negatives, meta=meta)
  ev.write_and_print(results, run.workdir)
  if false_negatives is not None:
    draw_examples(run, source, train, lam["image"])
  return results
