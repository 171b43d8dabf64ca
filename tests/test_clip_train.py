"""Image-text training end to end: the CC3M configs at toy size on caption shards with a hole and
a bad sample, evaluation outputs (results.json keys), retrieval ranks and chance levels."""

import json

import numpy as np
import pytest

from glofnd_jax.evaluation import image_text as image_text_eval
from glofnd_jax.evaluation import retrieval as retrieval_lib
from glofnd_jax.evaluation.fn_examples import select_examples
from glofnd_jax.training import loop
from glofnd_jax.training.plots import FALSE_NEGATIVES_PLOT, RUN_PLOTS


@pytest.fixture(scope="module")
def shards(tmp_path_factory, caption_shards):
  return caption_shards(tmp_path_factory.mktemp("shards"), 32, 3)


# digits_clip_glofnd runs on the real digits shards in tests/test_clip_cli.py. The SogCLR recipe
# trains a tiny ViT here (the ResNet tower is the FastCLIP case's), so both towers train.
@pytest.mark.parametrize("name,tower", [("cc3m_fastclip_glofnd", "modified_resnet"),
                                        ("cc3m_sogclr_glofnd", "vit")])
def test_cc3m_configs_train_and_evaluate(name, tower, shards, tmp_path, capsys, monkeypatch,
                                         tiny_image_text):
  config = tiny_image_text(name, shards)
  assert config.task == "clip" and config.model.image_tower == "modified_resnet"
  # Captions flagged from the first step, so false_negatives.png is drawn: lambda starts at each
  # anchor's batch quantile of its top 10% (lam_init = 1 would not come down in 2 short epochs);
  # the fixture's 8 distinct captions over 64 pairs make true cross-modal false negatives.
  g = config.glofnd
  g.start_update_epoch, g.start_mask_epoch, g.init_quantile, g.alpha = 0, 0, True, 0.1
  chosen = []  # the real selection of the picture's pairs, kept to check what it shows
  monkeypatch.setattr(image_text_eval, "select_examples",
                      lambda *a, **k: chosen.append(select_examples(*a, **k)) or chosen[-1])
  if tower == "vit":
    config.model.image_tower, config.model.vision_width, config.model.vision_heads = "vit", 32, 4
    config.model.vit_layers, config.model.patch_size = 1, 8
    # Zero-shot on a separate classification dataset, with its own class names.
    config.eval.zeroshot_dataset, config.eval.zeroshot_class_names = "synthetic", ()
  results = loop.train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert "Zero-shot top-1" in out and "image->text R@1" in out and "chance" in out
  assert "skipped bad samples {'empty_captions': 1}" in out
  # 64 pairs present (one more skipped), keys up to 200 (the skipped one): state rows 201.
  meta = results["meta"]
  assert meta["num_train_pairs"] == 64 and meta["data_size"] == 201
  assert meta["train_bad_samples"] == {"unusable": 0, "empty_captions": 1, "bad_images": 0}
  assert meta["train_damaged_shards"] == {"count": 0, "shards": []}
  for direction in ("image_to_text", "text_to_image"):
    entry = results["retrieval"][direction]
    assert set(entry) >= {"R@1", "R@5", "R@10", "median_rank", "mean_rank", "chance"}
  assert results["retrieval"]["num_pairs"] == 24
  expected = (10, 256, "synthetic") if tower == "vit" else (4, 24, "webdataset test pairs")
  zero_shot = results["zero_shot"]
  assert (zero_shot["num_classes"], zero_shot["num_images"], zero_shot["dataset"]) == expected
  assert 0 <= zero_shot["top1"] <= 1
  for side in ("image", "text"):
    assert 0 <= results["false_negatives"][side]["flagged_fraction"] <= 1
  assert results["false_negatives"]["image"]["num_pairs"] == 40 * 39  # fn_max_samples pairs
  saved = json.loads((tmp_path / "results.json").read_text())
  assert set(saved) == {"retrieval", "zero_shot", "false_negatives", "meta"}
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 8 and all(np.isfinite(r["train/loss"]) for r in rows)
  assert "detector/img/lambda_mean" in rows[-1] and "detector/txt/kept_fraction" in rows[-1]
  assert "detector/img/fn_precision" in rows[-1]  # labels known: judged in training
  # Temperature: learned (v3) moves the logit scale, constant (v1) keeps 1/0.07 exactly.
  scales = {r["train/logit_scale"] for r in rows}
  if config.loss.version == "v1":
    assert len(scales) == 1 and scales.pop() == pytest.approx(1 / 0.07)
  else:
    assert len(scales) > 1
  # Every plot, and image anchors beside their flagged captions (a new plot joins RUN_PLOTS).
  assert results["false_negatives"]["image"]["num_flagged"] > 0
  drawn = sorted(p.name for p in tmp_path.glob("*.png"))
  assert drawn == sorted((*RUN_PLOTS, FALSE_NEGATIVES_PLOT))
  assert any(p.flagged for p in chosen[-1])
  if tower == "modified_resnet":  # `glofnd-jax eval` draws it too (once: it costs compiles)
    (tmp_path / FALSE_NEGATIVES_PLOT).unlink()
    loop.evaluate_workdir(tmp_path)
    assert (tmp_path / FALSE_NEGATIVES_PLOT).exists() and any(p.flagged for p in chosen[-1])


def test_retrieval_ranks_and_chance_levels():
  """Three pairs, two sharing a caption: ranks count only wrong items scored higher."""
  image = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
  text = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  tokens = np.array([[5, 9, 0], [5, 9, 0], [5, 7, 9]])  # pairs 0 and 1 share a caption
  result = retrieval_lib.retrieval(image, text, tokens, ks=(1, 2))
  i2t, t2i = result["image_to_text"], result["text_to_image"]
  assert result["num_unique_captions"] == 2
  assert i2t["R@1"] == 1.0 and i2t["num_gallery"] == 2 and i2t["chance"]["R@1"] == 0.5
  assert t2i["R@1"] == 1.0 and t2i["num_queries"] == 2
  # Chance of a correct image in a random top 1 of 3: 2/3 for the shared caption, 1/3 else.
  assert t2i["chance"]["R@1"] == pytest.approx(0.5)
  swapped = retrieval_lib.retrieval(image[::-1], text, tokens, ks=(1,))
  assert swapped["image_to_text"]["R@1"] == pytest.approx(1 / 3)
