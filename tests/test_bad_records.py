"""Records that do not decode at train and evaluation time: ``data.on_bad_sample`` fail / skip
(:mod:`glofnd_jax.data.bad_records`)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from glofnd_jax import cli, errors
from glofnd_jax.data import bad_records, pipeline, records
from glofnd_jax.data.crops import HostCropConfig
from glofnd_jax.training import preflight

BAD_TRAIN, BAD_TEST = 5, 2  # the corrupt records' indices in their splits


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _store(data_dir, sizes=None) -> None:
  """train/val/test record stores of 3 classes of 8x8 RGB PNGs; one train and one test record
  hold bytes that are no image (what a store written by another tool can hold)."""
  rng = np.random.default_rng(0)
  sizes = sizes or {"train": 24, "val": 6, "test": 9}
  bad = {"train": BAD_TRAIN, "test": BAD_TEST}
  for split, count in sizes.items():
    examples = []
    for i in range(count):
      label = i % 3
      pixels = (rng.integers(0, 60, (8, 8, 3)) + 80 * label).astype(np.uint8)
      image = b"not an image" if bad.get(split) == i else _png(pixels)
      examples.append((image, label, f"{split}/{label}/{i}.png"))
    records.write_split(data_dir, split, examples)
  records.write_info(data_dir, records.ImageDatasetInfo(3, ["a", "b", "c"], None, "encoded",
                                                        splits=sizes))


def test_a_record_that_does_not_decode_fails_naming_index_file_and_key():
  stage = pipeline.decode_stage(image_size=8, channels=3)
  record = {"image": b"junk", "label": 1, "index": 7, "source": "cats/7.jpg"}
  with pytest.raises(errors.DataError) as caught:
    stage(record)
  message = str(caught.value)
  assert len(message.splitlines()) == 1
  assert message.startswith("record 7 (from cats/7.jpg) does not decode")
  assert "--config.data.on_bad_sample=skip" in message


def test_skip_puts_a_fixed_stand_in_of_the_batch_shape_in_place():
  stage = pipeline.decode_stage(image_size=(6, 5), channels=3, on_bad_sample="skip")
  bad = {"image": b"junk", "label": 2, "index": 7}
  out = stage(bad)
  assert out["image"].shape == (6, 5, 3) and out["image"].dtype == np.uint8
  assert out[bad_records.FLAG] and out["label"] == 2 and out["index"] == 7
  np.testing.assert_array_equal(stage(bad)["image"], out["image"])  # same on every read
  other = stage({**bad, "index": 8})["image"]
  assert not np.array_equal(other, out["image"])  # stand-ins are not duplicates of each other
  good = stage({"image": np.zeros((6, 5, 3), np.uint8), "label": 0, "index": 1})
  assert not good[bad_records.FLAG]
  with pytest.raises(ValueError, match="image shape"):
    pipeline.decode_stage(channels=3, on_bad_sample="skip")  # no size: no stand-in shape
  crops = pipeline.decode_stage(host_crop=HostCropConfig(size=4), channels=3,
                                on_bad_sample="skip")
  views = crops(bad)["image"]
  assert views.shape == (2, 4, 4, 3)  # both views of a host-cropped example
  np.testing.assert_array_equal(views[0], views[1])  # one stand-in image, as one real record


def test_preflight_reads_the_image_shape_past_a_bad_first_record(tmp_path):
  records.write_split(tmp_path, "train", [(b"junk", 0, "x/0.png"),
                                          (_png(np.zeros((6, 6, 3), np.uint8)), 1, "x/1.png")])
  records.write_info(tmp_path, records.ImageDatasetInfo(2, ["a", "b"], None, "encoded",
                                                        splits={"train": 2}))
  source = records.ArrayRecordImageSource(tmp_path, "train")
  with pytest.raises(errors.DataError, match="on_bad_sample=skip"):
    preflight.image_note(source, 8, 3, "train")
  note = preflight.image_note(source, 8, 3, "train", skip_bad=True)
  assert "resized from 6x6 (first record) to 8x8" in note


def test_skipped_records_keep_batches_fixed_and_a_resume_exact(tmp_path):
  _store(tmp_path, {"train": 24})
  source = records.ArrayRecordImageSource(tmp_path, "train")
  kwargs = dict(global_batch_size=8, seed=1, image_size=8, channels=3, on_bad_sample="skip",
                process_index=0, process_count=1, read_threads=0)
  iterator = pipeline.make_iterator(source, **kwargs)
  batches = [next(iterator) for _ in range(6)]  # two epochs: the bad record is read twice
  flagged = [b["index"][b[bad_records.FLAG]].tolist() for b in batches]
  assert sum(flagged, []) == [BAD_TRAIN, BAD_TRAIN]
  assert all(b["image"].shape == (8, 8, 8, 3) for b in batches)
  resumed = pipeline.make_iterator(source, **kwargs)
  resumed.set_state({"step": 2})  # a checkpoint before the skips of both epochs
  for want in batches[2:]:
    got = next(resumed)
    for name in want:
      np.testing.assert_array_equal(got[name], want[name])
  log = bad_records.BadRecordLog(source, "train", pipeline.decode_stage(image_size=8).decode,
                                 verbose=False)
  for batch in batches:
    log.note(batch)
  assert log.section() == {"bad_images": 1, "records": [
      {"split": "train", "index": BAD_TRAIN, "source": f"train/2/{BAD_TRAIN}.png",
       "error": log.records[BAD_TRAIN]["error"]}]}
  assert log.records[BAD_TRAIN]["error"]  # why it does not decode


def _train(data_dir, workdir, *overrides):
  return ["train", "--config", "digits_sogclr_glofnd", "--workdir", str(workdir),
          "--config.data.name=arrayrecord", f"--config.data.data_dir={data_dir}",
          "--config.data.image_size=8", "--config.data.channels=3", "--config.batch_size=8",
          "--config.epochs=1", "--config.glofnd.start_update_epoch=0",
          "--config.glofnd.start_mask_epoch=0", "--config.model.proj_hidden_dim=16",
          "--config.model.proj_dim=8", "--config.eval.knn_k=3", "--config.data.read_threads=0",
          "--config.eval.probe_fractions=(1.0,)", *overrides]


def test_training_fails_by_default_and_skips_on_request(tmp_path, capsys):
  data = tmp_path / "data"
  _store(data)
  assert cli.main(_train(data, tmp_path / "fail")) == 2
  err = capsys.readouterr().err
  error = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and "Traceback" not in err, err  # (the rest is the progress bar)
  assert (f"record {BAD_TRAIN} (from train/2/{BAD_TRAIN}.png) does not decode" in error[0]
          and "--config.data.on_bad_sample=skip" in error[0])

  workdir = tmp_path / "skip"
  assert cli.main(_train(data, workdir, "--config.data.on_bad_sample=skip")) == 0
  out = capsys.readouterr().out
  assert f"record {BAD_TRAIN} (from train/2/{BAD_TRAIN}.png) of split 'train'" in out
  meta = json.loads((workdir / "results.json").read_text())["meta"]
  train = meta["train_bad_samples"]
  assert train["bad_images"] == 1 and [(r["index"], r["source"]) for r in train["records"]] == [
      (BAD_TRAIN, f"train/2/{BAD_TRAIN}.png")]
  tested = meta["eval_bad_samples"]
  assert [(r["split"], r["index"], r["source"]) for r in tested["records"]] == [
      ("test", BAD_TEST, f"test/2/{BAD_TEST}.png")] and tested["bad_images"] == 1
  assert meta["num_train"] == 24 and meta["num_test"] == 9  # stand-ins keep every row
