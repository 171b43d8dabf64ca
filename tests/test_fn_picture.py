"""``false_negatives.png``: the selection of anchors and pairs, and the picture the evaluation
draws (that a tiny run and ``glofnd-jax eval`` write it: tests/test_train.py::
test_cli_train_then_eval)."""

import types

import numpy as np
import pytest
from PIL import Image

from glofnd_jax.data.synthetic import SyntheticSource
from glofnd_jax.evaluation import image_text as image_text_eval
from glofnd_jax.evaluation import unimodal as unimodal_eval
from glofnd_jax.evaluation.fn_examples import PICTURE_ANCHORS, select_examples


def _clusters(num_samples=40, num_classes=4, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(num_samples) % num_classes
  centres = rng.normal(size=(num_classes, dim))
  features = centres[labels] + 0.5 * rng.normal(size=(num_samples, dim))
  return features / np.linalg.norm(features, axis=1, keepdims=True), labels


def _check_against_brute_force(pairs, anchor_features, candidates, lam, labels, per_anchor):
  sims = anchor_features @ candidates.T
  for anchor in {p.anchor for p in pairs}:
    mine = [p for p in pairs if p.anchor == anchor]
    others = np.array([j for j in range(len(lam)) if j != anchor])
    flagged = others[sims[anchor, others] > lam[anchor]]
    kept = others[sims[anchor, others] <= lam[anchor]]
    top = lambda js: list(js[np.argsort(-sims[anchor, js], kind="stable")][:per_anchor])
    assert [p.neighbour for p in mine if p.flagged] == top(flagged)
    assert [p.neighbour for p in mine if not p.flagged] == top(kept)
    assert top(flagged), "an anchor without a flagged negative was chosen"
    for p in mine:
      assert p.neighbour != anchor and p.lam == pytest.approx(lam[anchor])
      assert p.similarity == pytest.approx(sims[anchor, p.neighbour], abs=1e-5)
      assert (p.similarity > p.lam) == p.flagged
      assert p.same_class == (labels[anchor] == labels[p.neighbour])


def test_selection_flags_above_lambda_and_marks_the_class():
  features, labels = _clusters()
  lam = np.full(len(labels), 2.0, np.float32)  # nothing above 2: no flags
  eligible = [3, 8, 13, 21, 30, 37, 39, 5]
  lam[eligible] = np.linspace(0.3, 0.8, len(eligible))
  pairs = select_examples(features, lam, labels, num_anchors=6, per_anchor=3, seed=1,
                          chunk_size=5)
  anchors = list(dict.fromkeys(p.anchor for p in pairs))
  assert len(anchors) == 6 and set(anchors) <= set(eligible)
  assert any(p.flagged for p in pairs) and any(not p.flagged for p in pairs)
  assert {p.same_class for p in pairs} == {True, False}
  _check_against_brute_force(pairs, features, features, lam, labels, per_anchor=3)
  # Fixed by the seed, whatever the chunking; fewer anchors than asked when fewer qualify.
  assert pairs == select_examples(features, lam, labels, num_anchors=6, per_anchor=3, seed=1)
  assert len({p.anchor for p in select_examples(features, lam, labels, num_anchors=20)}) == 8
  assert select_examples(features, np.full(len(labels), 2.0), labels) == []


def test_cross_modal_selection_excludes_the_positive_and_unknown_labels_are_none():
  images, labels = _clusters(seed=2)
  texts, _ = _clusters(seed=3)
  lam = np.full(len(labels), 0.2, np.float32)
  pairs = select_examples(images, lam, labels, candidates=texts, num_anchors=4, per_anchor=2)
  assert len({p.anchor for p in pairs}) == 4
  _check_against_brute_force(pairs, images, texts, lam, labels, per_anchor=2)
  pairs = select_examples(images, lam, None, candidates=texts, num_anchors=2)
  assert pairs and all(p.same_class is None for p in pairs)


def _fake_run(tmp_path, config, num_samples=24):
  """What :func:`unimodal_eval.draw_examples` reads of a run (``config``), on synthetic images."""
  source = SyntheticSource(num_samples, image_shape=(8, 8, 1), num_classes=4)
  return types.SimpleNamespace(config=config, source=source, workdir=tmp_path)


def test_the_evaluation_draws_flagged_pairs_and_removes_a_stale_picture(tmp_path, monkeypatch,
                                                                       capsys, tiny_unimodal):
  run = _fake_run(tmp_path, tiny_unimodal())
  features, labels = _clusters(len(run.source), num_classes=4)
  chosen = []

  def recording(*args, **kwargs):
    chosen.append(select_examples(*args, **kwargs))
    return chosen[-1]

  monkeypatch.setattr(unimodal_eval, "select_examples", recording)
  path = unimodal_eval.draw_examples(run, features, labels, np.full(len(labels), 0.6))
  assert path == tmp_path / "false_negatives.png" and path.exists()
  pairs = chosen[-1]
  assert len({p.anchor for p in pairs}) == PICTURE_ANCHORS
  assert any(p.flagged for p in pairs) and all((p.similarity > p.lam) == p.flagged for p in pairs)
  width, height = Image.open(path).size
  assert height > width / 3  # one row per anchor
  # Nothing flagged: no picture, and not the earlier one either.
  assert unimodal_eval.draw_examples(run, features, labels, np.full(len(labels), 2.0)) is None
  assert not path.exists() and "not drawn" in capsys.readouterr().out


class _Pairs:
  """The two reads :func:`image_text_eval.draw_examples` makes of a pair source."""

  def __init__(self, num_samples):
    self.images = SyntheticSource(num_samples, image_shape=(8, 8, 3), num_classes=4)

  def read_image(self, position):
    return self.images[position]["image"]

  def read_caption(self, position):
    return f"a picture of class {position % 4} number {position}"


def test_image_text_picture_shows_the_captions_of_image_anchors(tmp_path, monkeypatch,
                                                                tiny_unimodal):
  images, labels = _clusters(24, num_classes=4, seed=4)
  texts = images + 0.1 * np.random.default_rng(5).normal(size=images.shape)
  run = _fake_run(tmp_path, tiny_unimodal())
  captions = []
  source = _Pairs(len(labels))
  monkeypatch.setattr(source, "read_caption",
                      lambda p: captions.append(p) or _Pairs.read_caption(source, p))
  train = {"image": images, "text": texts, "labels": labels}
  path = image_text_eval.draw_examples(run, source, train, np.full(len(labels), 0.6))
  assert path == tmp_path / "false_negatives.png" and path.exists()
  pairs = select_examples(images, np.full(len(labels), 0.6), labels, candidates=texts,
                          seed=run.config.seed)
  assert any(p.flagged for p in pairs) and sorted(captions) == sorted(p.neighbour for p in pairs)
