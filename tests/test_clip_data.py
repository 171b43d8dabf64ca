"""Image-caption data (glofnd_jax/data/pairs/): webdataset reader, index contract, validator,
re-keying, bad samples, ArrayRecord pairs, the digits-caption default, and the caption tokenizer."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from glofnd_jax import cli
from glofnd_jax.data import tokenizer as tok
from glofnd_jax.data.pairs import (arrayrecord, digits_captions, registry, screening, shard_tools,
                                   shards, webdataset)
from glofnd_jax.data.pairs.pipeline import make_pair_iterator


def png(value: int, size: int = 4) -> bytes:
  """A size x size grey PNG whose every pixel is ``value`` (so a batch shows which sample it is)."""
  buffer = io.BytesIO()
  Image.fromarray(np.full((size, size), value % 256, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def write_shard(path, samples):
  """samples: (name, key or None, caption or None, image bytes or None, label or None)."""
  with shards.ShardWriter(path) as writer:
    for name, key, caption, image, label in samples:
      members = {}
      if image is not None:
        members["png"] = image
      if caption is not None:
        members["txt"] = caption.encode()
      obj = {}
      if key is not None:
        obj["key"] = key
      if label is not None:
        obj["label"] = label
      if obj:
        members["json"] = json.dumps(obj).encode()
      writer.write(name, members)


def keyed(keys, start_name=0, label=True):
  return [(f"s{start_name + i:04d}", k, f"caption number {k}", png(k), k % 3 if label else None)
          for i, k in enumerate(keys)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  texts = [f"caption number {k}" for k in range(50)] + digits_captions.all_captions()
  return tok.ClipTokenizer(tok.train_tokenizer(texts, path, vocab_size=600), context_length=8)


# ----------------------------------------------------------------------------- reader


def test_keys_are_the_batch_indices_and_holes_are_never_read(tmp_path, tokenizer):
  keys_a, keys_b = [0, 1, 2, 5, 6], [9, 10, 3]  # holes: 4, 7, 8
  write_shard(tmp_path / "a.tar", keyed(keys_a))
  write_shard(tmp_path / "b.tar", keyed(keys_b, start_name=10))
  source = webdataset.WebDatasetPairSource(str(tmp_path / "{a,b}.tar").replace(
      "{a,b}", "*"), index_dir=tmp_path / "index")
  assert source.data_size == 11 and len(source) == 8 and source.has_labels
  np.testing.assert_array_equal(np.sort(source.keys), sorted(keys_a + keys_b))
  assert "key 9" in source.describe(5) and "b.tar" in source.describe(5)
  iterator = make_pair_iterator(source, tokenizer, global_batch_size=4, seed=1,
                                image_size=4, channels=1, process_index=0, process_count=1)
  seen = []
  for _ in range(2):  # one epoch: every present key exactly once
    batch = next(iterator)
    np.testing.assert_array_equal(batch["index_img"], batch["index_txt"])
    # The image and the caption of each row belong to the key the row carries.
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["index_img"])
    for row, key in zip(batch["text"], batch["index_img"]):
      assert tokenizer.decode(row) == f"caption number {key}"
    np.testing.assert_array_equal(batch["label"], batch["index_img"] % 3)
    seen.extend(batch["index_img"].tolist())
  assert sorted(seen) == sorted(keys_a + keys_b)
  # The index cache is reused (same shards) and gives the same source.
  again = webdataset.WebDatasetPairSource(str(tmp_path / "*.tar"), index_dir=tmp_path / "index")
  np.testing.assert_array_equal(again.keys, source.keys)


def test_iterator_position_is_checkpointable_and_processes_split_batches(tmp_path, tokenizer):
  write_shard(tmp_path / "a.tar", keyed(range(12)))
  source = webdataset.WebDatasetPairSource(str(tmp_path / "a.tar"))
  make = lambda **kw: make_pair_iterator(source, tokenizer, global_batch_size=4, seed=3,
                                         image_size=4, channels=1, **kw)
  it = make(process_index=0, process_count=1)
  next(it)
  saved = it.get_state()
  expected = [next(it)["index_img"] for _ in range(4)]  # crosses an epoch boundary
  resumed = make(process_index=0, process_count=1)
  resumed.set_state(saved)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["index_img"], want)
  full = next(make(process_index=0, process_count=1))["index_img"]
  halves = [next(make(process_index=p, process_count=2))["index_img"] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), full)


def test_shard_patterns_and_compressed_shards(tmp_path):
  for i in range(3):
    write_shard(tmp_path / f"part-{i:03d}.tar", keyed([i]))
  assert len(shards.expand_shards(str(tmp_path / "part-{000..002}.tar"))) == 3
  assert len(shards.expand_shards(f"{tmp_path}/part-000.tar::{tmp_path}/part-002.tar")) == 2
  with pytest.raises(FileNotFoundError, match=r"part-005\.tar.*part-\{005\.\.007\}"):
    shards.expand_shards(str(tmp_path / "part-{005..007}.tar"))
  (tmp_path / "gz.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)
  with pytest.raises(ValueError, match="uncompressed"):
    webdataset.WebDatasetPairSource(str(tmp_path / "gz.tar"))


def test_source_refuses_duplicate_and_missing_keys(tmp_path):
  write_shard(tmp_path / "a.tar", keyed([0, 1, 2]))
  write_shard(tmp_path / "b.tar", keyed([2, 3], start_name=5))
  with pytest.raises(ValueError, match=r"key 2 in .*a\.tar.*b\.tar.*rekey-shards --all"):
    webdataset.WebDatasetPairSource(str(tmp_path / "*.tar"))
  write_shard(tmp_path / "c.tar", [("x", None, "no key here", png(1), None)])
  with pytest.raises(ValueError, match=r"c\.tar have no integer json field 'key'.*rekey-shards"):
    webdataset.WebDatasetPairSource(str(tmp_path / "c.tar"))


# ----------------------------------------------------------------------------- validator, rekey


def test_validator_reports_every_kind_of_problem(tmp_path, capsys):
  write_shard(tmp_path / "a.tar", keyed([0, 1, 5]) + [
      ("nokey", None, "a caption", png(3), 1),
      ("negative", -4, "a caption", png(3), 1),
      ("nocaption", 7, None, png(7), 1),
      ("badimage", 8, "a caption", b"not an image", 1),
      ("empty", 9, "   ", png(9), 1)])
  write_shard(tmp_path / "b.tar", keyed([5, 20], start_name=50))
  report = shard_tools.validate_shards(str(tmp_path / "*.tar"), verify_images=True, workers=1)
  assert not report["ok"]
  assert report["num_shards"] == 2 and report["num_samples"] == 10
  assert report["data_size"] == 21
  assert report["missing_key"]["count"] == 1 and "nokey" in report["missing_key"]["examples"][0]
  assert report["out_of_range"]["count"] == 1 and "-4" in report["out_of_range"]["examples"][0]
  dup = report["duplicate_keys"]
  assert dup["count"] == 1 and "key 5" in dup["examples"][0] and "b.tar" in dup["examples"][0]
  assert report["unusable"]["count"] == 1 and "nocaption" in report["unusable"]["examples"][0]
  # The image check needs a valid key set; it reports what it could not run.
  assert "verify_error" in report
  # Holes: 2, 3, 4, 6, 10..19 (7 has no caption but still holds its key).
  assert report["num_holes"] == 4 + 10 and report["hole_ranges"][0] == [2, 4]
  code = cli.main(["validate-shards", str(tmp_path / "*.tar")])
  assert code == 1 and "duplicate_keys: 1" in capsys.readouterr().out
  code = cli.main(["validate-shards", str(tmp_path / "b.tar"), "--data_size", "10"])
  assert code == 1 and "out_of_range" in capsys.readouterr().out


def test_validator_counts_bad_images_and_empty_captions(tmp_path):
  write_shard(tmp_path / "a.tar", keyed([0, 1]) + [
      ("badimage", 2, "a caption", b"not an image", 1), ("empty", 3, " ", png(3), 1)])
  report = shard_tools.validate_shards(str(tmp_path / "a.tar"), verify_images=True, workers=2)
  assert report["ok"]
  assert report["bad_images"]["count"] == 1 and "key 2" in report["bad_images"]["examples"][0]
  assert report["empty_captions"]["count"] == 1
  assert "a.tar key 3" in report["empty_captions"]["examples"][0]


def test_rekey_fills_missing_keys_then_renumbers(tmp_path, capsys):
  raw = tmp_path / "raw"
  write_shard(raw / "a.tar", [("x0", None, "first", png(0), None), ("x1", 4, "second", png(1), 2)])
  write_shard(raw / "b.tar", [("y0", None, "third", png(2), None)])
  with pytest.raises(ValueError, match="input shard"):
    shard_tools.rekey_shards(str(raw / "*.tar"), raw)
  summary = shard_tools.rekey_shards(str(raw / "*.tar"), tmp_path / "keyed")
  assert summary["num_samples"] == 3 and summary["num_rekeyed"] == 2
  source = webdataset.WebDatasetPairSource(str(tmp_path / "keyed" / "*.tar"))
  assert sorted(source.keys.tolist()) == [4, 5, 6] and source.data_size == 7
  assert source.read_caption(int(np.flatnonzero(source.keys == 6)[0])) == "third"
  assert shard_tools.validate_shards(str(tmp_path / "keyed" / "*.tar"))["ok"]
  # --all: contiguous keys, no holes, byte-identical when run twice.
  assert cli.main(["rekey-shards", str(raw / "*.tar"), str(tmp_path / "all"), "--all"]) == 0
  assert "3 given new keys" in capsys.readouterr().out
  source = webdataset.WebDatasetPairSource(str(tmp_path / "all" / "*.tar"))
  assert source.keys.tolist() == [0, 1, 2] and source.data_size == 3
  first = (tmp_path / "all" / "a.tar").read_bytes()
  shard_tools.rekey_shards(str(raw / "*.tar"), tmp_path / "all", renumber_all=True)
  assert (tmp_path / "all" / "a.tar").read_bytes() == first


# ----------------------------------------------------------------------------- bad samples


def _with_bad_samples(tmp_path):
  write_shard(tmp_path / "a.tar", keyed(range(6)) + [
      ("broken", 6, "a caption", b"\x89PNG garbage", 1),
      ("blank", 7, "", png(7), 1),
      ("nocaption", 8, None, png(8), 1)])
  return webdataset.WebDatasetPairSource(str(tmp_path / "a.tar"))


def test_bad_samples_are_counted_and_skipped(tmp_path, tokenizer):
  source = _with_bad_samples(tmp_path)
  screened = screening.screen_samples(source, on_bad_sample="skip", verify_images=True, workers=2,
                                      cache_dir=tmp_path / "cache")
  report = screened.report
  assert report["bad_images"]["count"] == 1 and "a.tar key 6" in report["bad_images"]["examples"][0]
  empty = report["empty_captions"]
  assert empty["count"] == 1 and "key 7" in empty["examples"][0]
  assert report["unusable"]["count"] == 1 and "nocaption" in report["unusable"]["examples"][0]
  assert report["num_kept"] == 6 and len(screened.source) == 6
  assert screened.source.data_size == 8  # skipped keys are holes: the state keeps its size
  batch = next(make_pair_iterator(screened.source, tokenizer, global_batch_size=6,
                                  image_size=4, channels=1, process_index=0,
                                  process_count=1))
  assert sorted(batch["index_img"].tolist()) == list(range(6))
  cached = screening.screen_samples(source, on_bad_sample="skip", verify_images=True,
                                    cache_dir=tmp_path / "cache")
  assert cached.report == report


def test_bad_samples_fail_naming_shard_and_key(tmp_path, tokenizer):
  source = _with_bad_samples(tmp_path)
  with pytest.raises(ValueError, match=r"unusable.*a\.tar sample 'nocaption'"):
    screening.screen_samples(source, on_bad_sample="fail")
  source.problems = []  # only the decodable-or-not samples are left to judge
  with pytest.raises(ValueError, match=r"a\.tar key 6 .* image that does not decode"):
    screening.screen_samples(source, on_bad_sample="fail", verify_images=True, workers=1)
  # Without the image check, a broken image stops the pipeline with its shard and key.
  screened = screening.screen_samples(source, on_bad_sample="skip", verify_images=False)
  iterator = make_pair_iterator(screened.source, tokenizer, global_batch_size=7,
                                shuffle=False, image_size=4, channels=1,
                                process_index=0, process_count=1, read_threads=0)
  with pytest.raises(ValueError, match=r"a\.tar key 6 .*verify_images=True"):
    next(iterator)


# ----------------------------------------------------------------------------- other formats


def test_arrayrecord_pairs_round_trip(tmp_path, tokenizer):
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 255, (5, 4, 4, 1), dtype=np.uint8)
  examples = [(raw[i], f"caption number {10 + i}", 10 + 2 * i, i % 2) for i in range(4)]
  examples.append((png(9), "caption number 9", 3, 1))
  assert arrayrecord.write_pairs(tmp_path, "train", examples, class_names=["even", "odd"]) == 5
  source = registry.open_pair_source("arrayrecord_captions", "train", data_dir=str(tmp_path))
  assert source.data_size == 17 and source.class_names == ["even", "odd"] and source.has_labels
  np.testing.assert_array_equal(source[1]["image"], raw[1])
  assert "key 12" in source.describe(1)
  batch = next(make_pair_iterator(source, tokenizer, global_batch_size=5, shuffle=False,
                                  image_size=4, channels=1, process_index=0,
                                  process_count=1))
  assert batch["index_img"].tolist() == [10, 12, 14, 16, 3]
  assert tokenizer.decode(batch["text"][4]) == "caption number 9"
  with pytest.raises(FileNotFoundError, match="write_pairs"):
    arrayrecord.ArrayRecordPairSource(tmp_path, "test")


def test_digits_captions_default(tmp_path):
  directory = digits_captions.prepare_digits_captions(tmp_path)
  sizes = {}
  for split in ("train", "val", "test"):
    source = webdataset.WebDatasetPairSource(digits_captions.split_pattern(directory, split))
    sizes[split] = len(source)
    assert source.keys.tolist() == list(range(len(source))) and source.has_labels
    for i in (0, len(source) - 1):
      label = int(source.labels[i])
      text = source.read_caption(i)
      assert digits_captions.CLASS_NAMES[label] in text or str(label) in text
  assert sizes == {"train": 1258, "val": 180, "test": 359}
  assert len(list(directory.glob("train-*.tar"))) == 4
  mtime = (directory / "train-00000.tar").stat().st_mtime_ns
  assert digits_captions.prepare_digits_captions(tmp_path) == directory  # reused, not rewritten
  assert (directory / "train-00000.tar").stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_train_load_encode(tmp_path, capsys):
  (tmp_path / "captions.txt").write_text("\n".join(digits_captions.all_captions()))
  assert cli.main(["train-tokenizer", "--captions", str(tmp_path / "captions.txt"),
                   "--out", str(tmp_path / "t.json"), "--vocab_size", "400"]) == 0
  assert "wrote" in capsys.readouterr().out
  tokenizer = tok.ClipTokenizer(tmp_path / "t.json", context_length=6)
  assert tokenizer.eot_id == tokenizer.vocab_size - 1 and tokenizer.vocab_size <= 400
  ids = tokenizer("A Handwritten SEVEN")
  assert ids.dtype == np.int32 and ids.shape == (6,) and ids[0] == tokenizer.sot_id
  assert tokenizer.decode(ids) == "a handwritten seven"  # lower-cased
  assert int(np.argmax(ids)) == int(np.flatnonzero(ids == tokenizer.eot_id)[0])
  long = tokenizer("the numeral 7, drawn with a pen on white paper")
  assert long[-1] == tokenizer.eot_id and (long != 0).all()  # cut, end token kept
  assert tokenizer.encode_batch(["a", "b c"]).shape == (2, 6)


def test_tokenizer_missing_file_and_wrong_end_token(tmp_path):
  with pytest.raises(FileNotFoundError, match="train-tokenizer"):
    tok.ClipTokenizer(tmp_path / "nope.json")
  path = tok.train_tokenizer(["one two", "two three"], tmp_path / "t.json", vocab_size=300,
                             min_frequency=1)
  with pytest.raises(ValueError, match="largest"):
    tok.ClipTokenizer(path, eot_token=tok.SOT_TOKEN, sot_token=tok.EOT_TOKEN)
  with pytest.raises(ValueError, match="'<nope>' token"):
    tok.ClipTokenizer(path, eot_token="<nope>")


def test_tokenizer_from_shards(tmp_path):
  write_shard(tmp_path / "a.tar", keyed(range(5)))
  assert sorted(tok.captions_from_shards(str(tmp_path / "a.tar"))) == [
      f"caption number {k}" for k in range(5)]


def test_tfds_image_text_dataset(tmp_path, tokenizer):
  """A prepared TFDS dataset (array_record, raw Tensor features: no TensorFlow) read as pairs."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, disable_shuffling=True,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
              "caption": tfds.features.Tensor(shape=(), dtype=np.object_),
              "label": tfds.features.ClassLabel(names=["a", "b"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        yield i, {"image": np.full((4, 4, 1), i, np.uint8), "caption": f"caption number {i}",
                  "label": i % 2}

  TinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  source = registry.open_pair_source("tfds:tiny_captions", "train", data_dir=str(tmp_path))
  assert len(source) == 6 and source.data_size == 6 and source.has_labels
  batch = next(make_pair_iterator(source, tokenizer, global_batch_size=6, shuffle=False,
                                  image_size=4, channels=1, process_index=0,
                                  process_count=1))
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["index_img"])
  assert tokenizer.decode(batch["text"][3]) == "caption number 3"
  np.testing.assert_array_equal(batch["label"], np.arange(6) % 2)
  with pytest.raises(ValueError, match="no feature 'text'"):
    registry.open_pair_source("tfds:tiny_captions", "train", data_dir=str(tmp_path),
                              caption_field="text")
