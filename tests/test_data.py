"""Data: our ArrayRecord format, folder conversion, digits, TFDS/ImageNet-100, the grain pipeline.

TFDS sources are tested on a tiny dataset prepared locally (array_record, Tensor features: no
TensorFlow, no network); a real imagenet2012 copy is never touched.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from glofnd_jax.data import (digits, folder, imagenet100, pipeline, records, registry, synthetic,
                             tfds_source)
from glofnd_jax.data.decode import decode_image, resize_image


class IndexedSource:
  """Record i has every pixel equal to i mod 256 and label i mod 7: its position is visible."""

  def __init__(self, n, shape=(2, 2, 1)):
    self.n, self.shape = n, shape

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full(self.shape, i % 256, np.uint8), "label": i % 7}


def _batches(it, count):
  return [next(it) for _ in range(count)]


def _png_bytes(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


# ---------------------------------------------------------------------------- our format


def test_records_round_trip_raw_and_encoded(tmp_path):
  rng = np.random.default_rng(0)
  raw = [rng.integers(0, 256, (5, 4, 3), dtype=np.uint8) for _ in range(3)]
  encoded = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
  count = records.write_split(tmp_path, "train",
                              [(raw[0], 2), (raw[1], 0), (_png_bytes(encoded), 1), (raw[2], 2)])
  records.write_info(tmp_path, records.ImageDatasetInfo(
      num_classes=3, class_names=["a", "b", "c"], image_shape=None, encoding="mixed",
      splits={"train": count}))
  src = records.ArrayRecordImageSource(tmp_path, "train")
  assert len(src) == 4 and src.num_classes == 3 and src.class_names == ["a", "b", "c"]
  np.testing.assert_array_equal(src[1]["image"], raw[1])
  assert src[1]["label"] == 0
  assert isinstance(src[2]["image"], bytes)
  np.testing.assert_array_equal(decode_image(src[2]["image"]), encoded)
  assert not (tmp_path / "train.array_record.tmp").exists()


def test_records_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a glofnd_jax image dataset"):
    records.ArrayRecordImageSource(tmp_path, "train")
  records.write_split(tmp_path, "train", [(np.zeros((2, 2), np.uint8), 0)])
  records.write_info(tmp_path, records.ImageDatasetInfo(1, ["x"], [2, 2, 1], "raw", {"train": 5}))
  with pytest.raises(ValueError, match="incomplete"):
    records.ArrayRecordImageSource(tmp_path, "train")
  with pytest.raises(ValueError, match="no split 'val'"):
    records.ArrayRecordImageSource(tmp_path, "val")


def test_decode_and_resize():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  assert decode_image(gray).shape == (3, 4, 1)
  assert decode_image(gray, channels=3).shape == (3, 4, 3)
  rgb = np.zeros((10, 20, 3), np.uint8)
  rgb[:, 5:15] = 255  # centre crop of a wide image keeps the bright middle
  out = resize_image(rgb, (4, 4), "center_crop")
  assert out.shape == (4, 4, 3) and out.min() > 200
  assert resize_image(rgb, (4, 4), "stretch").shape == (4, 4, 3)
  assert decode_image(_png_bytes(rgb)).shape == (10, 20, 3)


def test_convert_folder(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "src"
  sizes = {"cat": [(9, 12), (10, 10)], "dog": [(7, 8)]}
  for name, shapes in sizes.items():
    (src / name).mkdir(parents=True)
    for k, shape in enumerate(shapes):
      Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(
          src / name / f"{k}.png")
  (src / "dog" / "notes.txt").write_text("not an image")

  info = folder.convert_folder(src, tmp_path / "enc", split="train")
  assert info.class_names == ["cat", "dog"] and info.splits == {"train": 3}
  assert info.encoding == "encoded" and info.image_shape is None
  source = records.ArrayRecordImageSource(tmp_path / "enc", "train")
  assert [source[i]["label"] for i in range(3)] == [0, 0, 1]
  # Variable-size files: the pipeline decodes and resizes them.
  batch = next(pipeline.make_iterator(source, global_batch_size=3, shuffle=False, image_size=5,
                                      process_index=0, process_count=1))
  assert batch["image"].shape == (3, 5, 5, 3) and batch["image"].dtype == np.uint8

  assert folder.main([str(src), str(tmp_path / "raw"), "--image_size", "6", "--split",
                      "val"]) == 0
  raw = records.ArrayRecordImageSource(tmp_path / "raw", "val")
  assert raw.image_shape == (6, 6, 3) and raw[2]["image"].shape == (6, 6, 3)


# ---------------------------------------------------------------------------- digits


def test_digits_prepare_split_and_reuse(tmp_path):
  from sklearn.datasets import load_digits

  data_dir = digits.prepare_digits(tmp_path)
  info = records.read_info(data_dir)
  members = {s: np.asarray(info.extra["source_indices"][s]) for s in digits.SPLITS}
  assert sum(len(m) for m in members.values()) == 1797
  assert len(np.unique(np.concatenate(list(members.values())))) == 1797  # disjoint, covering
  assert abs(len(members["train"]) / 1797 - 0.7) < 0.01
  bunch = load_digits()
  for split in digits.SPLITS:
    src = digits.digits_source(tmp_path, split)
    assert len(src) == len(members[split]) == info.splits[split]
    # Stratified: each class is in each split in about its global proportion.
    counts = np.bincount(bunch.target[members[split]], minlength=10)
    assert counts.min() >= 0.8 * counts.mean()
    for i in (0, len(src) - 1):  # record i is the stored sklearn row, scaled to uint8
      row = members[split][i]
      np.testing.assert_array_equal(src[i]["image"][..., 0],
                                    np.rint(bunch.images[row] * 255 / 16).astype(np.uint8))
      assert src[i]["label"] == bunch.target[row]
      assert src[i]["image"].shape == (8, 8, 1)

  stamp = (data_dir / "train.array_record").stat().st_mtime_ns
  assert digits.prepare_digits(tmp_path) == data_dir
  assert (data_dir / "train.array_record").stat().st_mtime_ns == stamp  # reused, not rewritten
  # A damaged copy is rebuilt.
  (data_dir / "val.array_record").unlink()
  digits.prepare_digits(tmp_path)
  assert len(digits.digits_source(tmp_path, "val")) == len(members["val"])
  # Another split seed is another dataset with another membership.
  other = records.read_info(digits.prepare_digits(tmp_path, seed=1))
  assert other.extra["source_indices"]["train"] != info.extra["source_indices"]["train"]


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_source():
  src = synthetic.SyntheticSource(num_samples=30, image_shape=(12, 10, 3), num_classes=3, seed=1)
  rec = src[4]
  assert rec["image"].shape == (12, 10, 3) and rec["image"].dtype == np.uint8
  assert rec["label"] == 1 and len(src) == 30
  np.testing.assert_array_equal(src[4]["image"], rec["image"])
  other_split = synthetic.SyntheticSource(30, (12, 10, 3), 3, seed=1, split="val")
  assert not np.array_equal(other_split[4]["image"], rec["image"])
  # Class structure: same-class images are closer than different-class ones.
  images = np.stack([src[i]["image"] for i in range(30)]).astype(np.float32).reshape(30, -1)
  labels = np.arange(30) % 3
  dist = ((images[:, None] - images[None]) ** 2).sum(-1)
  same = dist[(labels[:, None] == labels[None]) & ~np.eye(30, dtype=bool)].mean()
  assert same < dist[labels[:, None] != labels[None]].mean()
  with pytest.raises(IndexError):
    src[30]


# ---------------------------------------------------------------------------- pipeline


def test_pipeline_epochs_cover_each_index_once_and_index_is_true_position():
  n, batch, epochs = 23, 4, 3
  it = pipeline.make_iterator(IndexedSource(n), global_batch_size=batch, seed=3,
                              num_epochs=epochs, process_index=0, process_count=1)
  steps = pipeline.steps_per_epoch(n, batch)
  assert steps == 5
  got = list(it)
  assert len(got) == steps * epochs
  orders = []
  for e in range(epochs):
    epoch = got[e * steps:(e + 1) * steps]
    for b in epoch:
      assert b["image"].shape == (batch, 2, 2, 1) and b["image"].dtype == np.uint8
      assert b["index"].dtype == np.int32 and b["label"].dtype == np.int32
      np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["index"])  # true position
      np.testing.assert_array_equal(b["label"], b["index"] % 7)
    idx = np.concatenate([b["index"] for b in epoch])
    assert len(np.unique(idx)) == steps * batch  # each index at most once; remainder dropped
    assert idx.min() >= 0 and idx.max() < n
    orders.append(idx)
  assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


def test_pipeline_deterministic_per_seed():
  def run(seed):
    it = pipeline.make_iterator(IndexedSource(40), global_batch_size=8, seed=seed,
                                process_index=0, process_count=1)
    return np.concatenate([b["index"] for b in _batches(it, 7)])

  np.testing.assert_array_equal(run(5), run(5))
  assert not np.array_equal(run(5), run(6))


def test_pipeline_resume_from_state():
  kwargs = dict(global_batch_size=6, seed=11, process_index=0, process_count=1, read_threads=2)
  it = pipeline.make_iterator(IndexedSource(20), **kwargs)
  _batches(it, 2)
  state = it.get_state()
  expected = _batches(it, 5)  # crosses the epoch boundary (3 steps per epoch)
  resumed = pipeline.make_iterator(IndexedSource(20), **kwargs)
  resumed.set_state(json.loads(json.dumps(state)))  # states survive a JSON round trip
  for want, got in zip(expected, _batches(resumed, 5)):
    np.testing.assert_array_equal(want["index"], got["index"])
    np.testing.assert_array_equal(want["image"], got["image"])


def test_pipeline_two_processes_split_each_global_batch():
  source, batch = IndexedSource(50), 8
  single = _batches(pipeline.make_iterator(source, global_batch_size=batch, seed=2,
                                           process_index=0, process_count=1), 9)
  halves = [_batches(pipeline.make_iterator(source, global_batch_size=batch, seed=2,
                                            process_index=p, process_count=2), 9)
            for p in range(2)]
  for step in range(9):
    first, second = halves[0][step]["index"], halves[1][step]["index"]
    assert len(first) == len(second) == batch // 2
    assert not set(first) & set(second)
    # Process-order concatenation is the global batch: indices stay global.
    np.testing.assert_array_equal(np.concatenate([first, second]), single[step]["index"])
  with pytest.raises(ValueError, match="multiple of the process count"):
    pipeline.make_dataset(source, global_batch_size=7, process_index=0, process_count=2)


def test_pipeline_eval_mode_pads_last_batch():
  it = pipeline.make_iterator(IndexedSource(10), global_batch_size=4, shuffle=False,
                              drop_remainder=False, num_epochs=1, process_index=0,
                              process_count=1)
  got = list(it)
  idx = np.concatenate([b["index"] for b in got])
  np.testing.assert_array_equal(idx, list(range(10)) + [-1, -1])
  assert (np.concatenate([b["label"] for b in got])[-2:] == -1).all()
  with pytest.raises(ValueError, match="shuffle=False"):
    pipeline.make_dataset(IndexedSource(10), global_batch_size=4, drop_remainder=False)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.make_dataset(IndexedSource(3), global_batch_size=4)


# ---------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A prepared TFDS dataset ``tiny_wnid_images`` (array_record) whose labels are wnids."""
  tfds = pytest.importorskip("tensorflow_datasets")
  names = ["n01440764", "n99999999", "n01484850", "n01443537"]  # 3 in ImageNet-100, 1 not

  class TinyWnidImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=(6, 6, 3), dtype=np.uint8),
              "png": tfds.features.Tensor(shape=(), dtype=np.object_),
              "label": tfds.features.ClassLabel(names=names)}),
          disable_shuffling=True)  # record position = generation order

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(12), "validation": self._generate_examples(4)}

    def _generate_examples(self, n):
      for i in range(n):
        image = np.full((6, 6, 3), i, np.uint8)
        yield i, {"image": image, "png": _png_bytes(image), "label": i % 4}

  data_dir = tmp_path_factory.mktemp("tfds")
  TinyWnidImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir, "tiny_wnid_images", names


def test_tfds_source_reads_records(tiny_tfds):
  data_dir, name, names = tiny_tfds
  src = tfds_source.TfdsSource(name, "train", data_dir)
  assert len(src) == 12 and src.num_classes == 4 and src.class_names == names
  assert src[5]["label"] == 1 and src[5]["image"].shape == (6, 6, 3)
  np.testing.assert_array_equal(src.labels(chunk_size=5), np.arange(12) % 4)
  # Encoded bytes (here a PNG held in a string feature) are decoded by the pipeline.
  png = tfds_source.TfdsSource(name, "validation", data_dir, image_key="png")
  batch = next(pipeline.make_iterator(png, global_batch_size=4, shuffle=False,
                                      process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], [0, 1, 2, 3])
  src_via_registry = registry.get_source(f"tfds:{name}", "train", data_dir=data_dir)
  assert len(src_via_registry) == 12


def test_tfds_missing_dataset_error_names_dataset_and_dir(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match=r"'no_such_dataset_xyz'.*no_such_dir"):
    tfds_source.TfdsSource("no_such_dataset_xyz", "train", tmp_path / "no_such_dir")
  # Registered but not prepared: no download attempt, a clear error instead.
  with pytest.raises(FileNotFoundError, match=r"'imagenet2012'.*nothing is prepared"):
    tfds_source.TfdsSource("imagenet2012", "train", tmp_path)


def test_imagenet100_class_list_and_label_map():
  wnids = imagenet100.load_class_list()
  assert len(wnids) == 100 and len(set(wnids)) == 100 and wnids[0] == "n01440764"
  full = ["n0"] + wnids[::-1] + ["n1"]  # a 102-class "full" dataset in another order
  mapping = imagenet100.label_map(full, wnids)
  assert mapping[0] == -1 and mapping[-1] == -1
  np.testing.assert_array_equal(mapping[1:101], np.arange(99, -1, -1))
  np.testing.assert_array_equal(imagenet100.subset_indices(np.array([0, 1, 101, 5]), mapping),
                                [1, 3])
  with pytest.raises(ValueError, match="not in the full dataset"):
    imagenet100.label_map(["n0"], wnids)


def test_imagenet100_subset_of_tfds(tiny_tfds, tmp_path):
  data_dir, name, _ = tiny_tfds
  class_file = tmp_path / "classes.txt"
  # Subset order differs from the full dataset's: labels must be remapped, not just filtered.
  class_file.write_text("# header\nn01484850 0\nn01440764 1\nn01443537 2\n")
  cache = tmp_path / "cache"
  src = imagenet100.imagenet100_source("train", data_dir, cache_dir=cache, dataset_name=name,
                                       class_file=class_file)
  # Full labels cycle 0,1,2,3 (wnid order n01440764, n99999999, n01484850, n01443537).
  kept = [i for i in range(12) if i % 4 != 1]
  assert len(src) == len(kept) and src.num_classes == 3
  remap = {0: 1, 2: 0, 3: 2}
  for j, i in enumerate(kept):
    assert src[j]["label"] == remap[i % 4]
    assert src[j]["image"][0, 0, 0] == i
  assert len(list(cache.glob("*.npy"))) == 1
  again = imagenet100.imagenet100_source("train", data_dir, cache_dir=cache, dataset_name=name,
                                         class_file=class_file)
  assert len(again) == len(src)


def test_registry_opens_each_kind(tmp_path):
  digits_train = registry.get_source("digits", "train", workdir=tmp_path)
  assert len(digits_train) == records.read_info(tmp_path / "data" / "digits_seed0").splits["train"]
  synth = registry.get_source("synthetic", "val", num_samples=12, image_shape=(4, 4, 3))
  assert len(synth) == 12 and synth[0]["image"].shape == (4, 4, 3)
  ours = registry.get_source("arrayrecord", "train", data_dir=tmp_path / "data" / "digits_seed0")
  assert len(ours) == len(digits_train)
  with pytest.raises(ValueError, match="unknown dataset"):
    registry.get_source("mnist", "train")
  with pytest.raises(ValueError, match="workdir"):
    registry.get_source("digits", "train")
