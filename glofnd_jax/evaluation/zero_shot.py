"""Zero-shot classification with a CLIP model's text tower as the classifier.

Each class's prompts (templates filled with its name) are embedded, normalised and averaged
(CLIP's prompt ensembling); an image gets the class of highest cosine similarity.
"""

from __future__ import annotations

import numpy as np

from glofnd_jax.evaluation.features import extract_features, normalized, state_variables
from glofnd_jax.models.clip import CLIP


def class_embeddings(run, state, class_names, templates) -> np.ndarray:
  """``(C, E)`` normalised mean of each class's normalised prompt embeddings.

  Args:
    run: the image-text run (its ``model`` and ``tokenizer`` are used).
    state: the train state whose text tower embeds the prompts.
    class_names: ``C`` names, in label order.
    templates: ``T`` prompt templates, each with ``{}`` where the class name goes.
  """
  if not class_names:
    raise ValueError("zero-shot needs class names: set eval.zeroshot_class_names.")
  if not templates or any("{}" not in t for t in templates):
    raise ValueError(f"eval.zeroshot_templates={tuple(templates)!r}: give at least one template, "
                     "each with '{}' where the class name goes.")
  tokens = run.tokenizer.encode_batch([t.format(name) for name in class_names
                                       for t in templates])
  encode = lambda variables, text: run.model.apply(variables, text, method=CLIP.encode_text)
  # All C x T prompts in one call, as one batch.
  text = normalized(extract_features(encode, state_variables(state), tokens,
                                     batch_size=len(tokens)))
  text = text.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return normalized(text)


def zero_shot(image_features: np.ndarray, labels: np.ndarray,
              class_text: np.ndarray) -> dict:
  """Accuracy of ``argmax_c cos(image, class_text[c])``; top-5 with at least 5 classes.

  Args:
    image_features: ``(M, E)`` image features (normalised here).
    labels: ``(M,)`` class ids in ``[0, C)``.
    class_text: ``(C, E)`` from :func:`class_embeddings`.

  Returns:
    ``{"top1", "num_classes", "num_images", "chance_top1"}``, plus ``"top5"`` and
    ``"chance_top5"`` with at least 5 classes.
  """
  labels = np.asarray(labels)
  num_classes = class_text.shape[0]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"zero-shot labels span [{labels.min()}, {labels.max()}] but there are "
                     f"{num_classes} class names.")
  scores = normalized(image_features) @ class_text.T
  ranked = np.argsort(-scores, axis=1)
  result = {"top1": float(np.mean(ranked[:, 0] == labels)), "num_classes": int(num_classes),
            "num_images": int(len(labels)), "chance_top1": 1.0 / num_classes}
  if num_classes >= 5:
    result["top5"] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))
    result["chance_top5"] = 5.0 / num_classes
  return result
