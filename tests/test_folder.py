"""`glofnd-jax convert-folder`: splits, verification of every image, image modes, atomic writes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from glofnd_jax import cli, errors
from glofnd_jax.data import folder, image_files, pipeline, records


def _save(path, image: Image.Image, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, **kwargs)


def _folder_of_modes(src):
  """Two classes of small files in every mode a folder may hold, plus two bad files."""
  rng = np.random.default_rng(0)
  rgb = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))  # noqa: E731
  for k in range(4):
    _save(src / "cat" / f"rgb{k}.png", rgb(9 + k, 12))
    _save(src / "dog" / f"rgb{k}.jpg", rgb(7, 8 + k))
  _save(src / "cat" / "grey.jpg", rgb(8, 8).convert("L"))
  _save(src / "cat" / "palette.png", rgb(8, 8).convert("P"))
  _save(src / "dog" / "cmyk.jpg", rgb(8, 8).convert("CMYK"))
  _save(src / "dog" / "rgba.png", Image.new("RGBA", (6, 6), (10, 20, 30, 0)))  # transparent
  grey16 = Image.fromarray(np.full((5, 5), 65535, np.uint16))
  _save(src / "dog" / "grey16.png", grey16)
  exif = Image.Exif()
  exif[0x0112] = 6  # stored sideways: to be turned 90 degrees
  _save(src / "cat" / "rotated.jpg", rgb(4, 8), exif=exif)
  buffer = io.BytesIO()
  rgb(16, 16).save(buffer, format="JPEG")
  (src / "cat" / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
  (src / "dog" / "not_an_image.png").write_text("hello")


def test_modes_are_normalised(tmp_path):
  _folder_of_modes(tmp_path)
  load = lambda name: image_files.load_verified(tmp_path / name)[0]  # noqa: E731
  assert load("cat/rotated.jpg").size == (4, 8)  # (width, height) after the EXIF turn
  assert np.asarray(load("dog/grey16.png")).max() == 255 and load("dog/grey16.png").mode == "L"
  assert (np.asarray(load("dog/rgba.png")) == 255).all()  # transparent -> white
  assert load("dog/cmyk.jpg").mode == "RGB" and load("cat/palette.png").mode == "RGB"
  assert load("cat/grey.jpg").mode == "L"
  for bad in ("cat/truncated.jpg", "dog/not_an_image.png"):
    with pytest.raises(image_files.BadImage):
      image_files.load_verified(tmp_path / bad)


def test_one_folder_to_stratified_splits_skipping_bad_files(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  _folder_of_modes(src)
  assert cli.main(["convert-folder", str(src), str(out), "--val-fraction", "0.2",
                   "--test-fraction", "0.2", "--seed", "1"]) == 0
  printed = capsys.readouterr().out
  assert "skipped" in printed and "truncated.jpg" in printed and "images/s" in printed
  info = records.read_info(out)
  assert sum(info.splits.values()) == 14 and set(info.splits) == {"train", "val", "test"}
  for split in ("train", "val", "test"):  # stratified: every class in every split
    assert all(info.extra["class_counts"][split]), (split, info.extra["class_counts"])
  report = json.loads((out / folder.REPORT_FILE).read_text())
  assert sorted(s["path"] for s in report["skipped"]) == ["cat/truncated.jpg",
                                                          "dog/not_an_image.png"]
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["metadata.json", folder.REPORT_FILE, "train.array_record", "val.array_record",
       "test.array_record"])  # no staging folder, no .tmp
  source = records.ArrayRecordImageSource(out, "train")
  assert {source[i]["source"].split("/")[0] for i in range(len(source))} == {"cat", "dog"}
  # Same seed, same draw.
  again = folder.convert_folder(src, tmp_path / "again", val_fraction=0.2, test_fraction=0.2,
                                seed=1)
  assert again.extra["class_counts"] == info.extra["class_counts"]


def test_bad_file_is_fatal_by_flag_and_leaves_nothing(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  _folder_of_modes(src)
  code = cli.main(["convert-folder", str(src), str(out), "--on-bad-image", "fail",
                   "--image-size", "6"])
  assert code == 2
  error = capsys.readouterr().err.strip()
  assert len(error.splitlines()) == 1 and "truncated.jpg does not decode" in error
  assert list(out.iterdir()) == []  # nothing half-written, no temporary file


def test_train_val_test_subfolders(tmp_path):
  rng = np.random.default_rng(0)
  for split, count in (("train", 3), ("val", 1), ("test", 2)):
    for name in ("a", "b"):
      for k in range(count):
        _save(tmp_path / "src" / split / name / f"{k}.png",
              Image.fromarray(rng.integers(0, 256, (5, 5, 3), np.uint8)))
  info = folder.convert_folder(tmp_path / "src", tmp_path / "out", image_size=4)
  assert info.splits == {"train": 6, "val": 2, "test": 4} and info.image_shape == [4, 4, 3]
  assert records.ArrayRecordImageSource(tmp_path / "out", "test")[0]["image"].shape == (4, 4, 3)


def test_stratified_split_keeps_a_training_example_per_class():
  parts = folder.stratified_split([0] * 10 + [1] * 2 + [2], 0.1, 0.2, seed=0)
  labels = np.asarray([0] * 10 + [1] * 2 + [2])
  assert set(labels[parts["train"]]) == {0, 1, 2}
  assert len(parts["test"]) == 2 + 1 and len(parts["val"]) == 1  # 0: 2 test 1 val; 1: 1 test
  assert len(np.concatenate(list(parts.values()))) == 13


def test_record_that_fails_to_decode_at_train_time_is_named(tmp_path):
  good = io.BytesIO()
  Image.new("RGB", (4, 4)).save(good, format="PNG")
  records.write_split(tmp_path, "train", [(good.getvalue(), 0, "a/ok.png"),
                                          (b"garbage", 1, "b/broken.png")])
  records.write_info(tmp_path, records.ImageDatasetInfo(2, ["a", "b"], None, "encoded",
                                                        splits={"train": 2}))
  source = records.ArrayRecordImageSource(tmp_path, "train")
  iterator = pipeline.make_iterator(source, global_batch_size=2, shuffle=False, image_size=4,
                                    process_index=0, process_count=1, read_threads=0)
  with pytest.raises(errors.DataError, match=r"record 1 \(from b/broken.png\) does not decode"):
    next(iterator)
