"""Damaged webdataset shards (glofnd_jax/data/pairs/integrity.py): real tar files cut mid-member,
cut between members, with an unreadable header, or holding fewer samples than their manifest.
Each is an error in validate-shards, in the reader (unless data.on_damaged_shard='skip') and in
rekey-shards, naming the shard, the byte offset and the last good key."""

import tarfile

import pytest
from test_clip_data import keyed, png, write_shard

from glofnd_jax import cli
from glofnd_jax.data.pairs import integrity, shard_tools, shards, webdataset
from glofnd_jax.config import image_text as image_text_config
from glofnd_jax.training import image_text, loop


def _member_offsets(path):
  with tarfile.open(path) as tar:
    return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def _cut_mid_member(data, members):
  _, _, data_offset = members[10]  # s0013.txt: inside its data
  return data[:data_offset + 5]


def _cut_between_members(data, members):
  return data[:members[12][1]]  # right before s0014.png's header


def _garbled_header(data, members):
  offset = members[12][1]
  return data[:offset] + b"x" * 20 + data[offset + 20:]


# How the file is damaged -> (what the reason says, the byte offset named).
DAMAGE = {
    "cut_mid_member": (_cut_mid_member, "member 's0013.txt' is cut", 10),
    "cut_between_members": (_cut_between_members, "without the tar end-of-archive marker", 12),
    "garbled_header": (_garbled_header, "is unreadable (not a tar header)", 12),
}


@pytest.fixture
def damaged_set(tmp_path, request):
  """An intact a.tar (keys 0..7) and b.tar (keys 10..17) damaged as ``request.param`` says."""
  write_shard(tmp_path / "a.tar", keyed(range(8)))
  write_shard(tmp_path / "b.tar", keyed(range(10, 18), start_name=10))
  damage, reason, member = DAMAGE[request.param]
  data, members = (tmp_path / "b.tar").read_bytes(), _member_offsets(tmp_path / "b.tar")
  (tmp_path / "b.tar").write_bytes(damage(data, members))
  (tmp_path / "b.tar.manifest.json").unlink()  # the tar itself must tell: no manifest to compare
  return tmp_path, reason, members[member][1]


@pytest.mark.parametrize("damaged_set", sorted(DAMAGE), indirect=True)
def test_a_damaged_shard_is_an_error_naming_shard_offset_and_last_good_key(damaged_set, capsys):
  root, reason, offset = damaged_set
  report = shard_tools.validate_shards(str(root / "*.tar"), verify_images=True, workers=1)
  assert not report["ok"] and report["damaged_shards"]["count"] == 1
  line = report["damaged_shards"]["examples"][0]
  assert line.startswith(f"shard {root / 'b.tar'} is damaged at byte {offset}: ")
  assert reason in line and "last good sample 's0012' (key 12)" in line
  assert report["per_shard"][str(root / "a.tar")] == 8
  assert report["per_shard"][str(root / "b.tar")] == 3  # s0013 (at the damage) is not used
  assert cli.main(["validate-shards", str(root / "*.tar"), "--verify_images"]) == 1
  out = capsys.readouterr().out
  assert "damaged_shards: 1" in out and "NOT OK: damaged shard(s): copy them again" in out
  with pytest.raises(ValueError, match=r"1 of 2 shard\(s\) are damaged, e.g. shard .*b\.tar is "
                     r"damaged at byte .*key 12\).*on_damaged_shard='skip'"):
    webdataset.WebDatasetPairSource(str(root / "*.tar"))
  skipped = webdataset.WebDatasetPairSource(str(root / "*.tar"), on_damaged_shard="skip")
  assert sorted(skipped.keys.tolist()) == [*range(8), 10, 11, 12]
  assert skipped.damaged == [line]
  with pytest.raises(ValueError, match=r"1 input shard\(s\) are damaged, and re-keying would drop"):
    shard_tools.rekey_shards(str(root / "*.tar"), root / "keyed", renumber_all=True)
  assert not (root / "keyed").exists()


def test_a_shard_with_fewer_samples_than_its_manifest_is_damaged(tmp_path):
  """Whole samples lost (a well-formed tar, rewritten shorter): only the manifest can tell."""
  write_shard(tmp_path / "a.tar", keyed(range(8)))
  manifest = integrity.manifest_path(tmp_path / "a.tar").read_text()
  assert manifest == '{"samples": 8, "bytes": %d}\n' % (tmp_path / "a.tar").stat().st_size
  write_shard(tmp_path / "a.tar", keyed(range(5)))
  integrity.manifest_path(tmp_path / "a.tar").write_text(manifest)  # the set's original record
  index = shards.index_shard(str(tmp_path / "a.tar"))
  assert len(index) == 5
  assert ("has 5 intact sample(s)" in index.damage and "says 8 sample(s)" in index.damage
          and "last good sample 's0004' (key 4)" in index.damage)
  assert not shard_tools.validate_shards(str(tmp_path / "a.tar"))["ok"]


def test_intact_shards_and_the_rekeyed_copies_are_not_damaged(tmp_path):
  write_shard(tmp_path / "raw" / "a.tar", [(f"x{i}", key, f"caption {i}", png(i), None)
                                           for i, key in enumerate([None, None, 3])])
  summary = shard_tools.rekey_shards(str(tmp_path / "raw" / "a.tar"), tmp_path / "keyed")
  assert summary["num_samples"] == 3
  for path in (tmp_path / "raw" / "a.tar", tmp_path / "keyed" / "a.tar"):
    assert shards.index_shard(str(path)).damage == ""
  report = shard_tools.validate_shards(str(tmp_path / "keyed" / "a.tar"))
  assert report["ok"] and report["damaged_shards"]["count"] == 0


def test_on_damaged_shard_is_checked():
  config = image_text_config.clip_base_config()
  config.data.on_damaged_shard = "ignore"
  with pytest.raises(ValueError, match="config.data.on_damaged_shard='ignore' is invalid"):
    image_text_config.validate(config)
  with pytest.raises(ValueError, match="data.on_damaged_shard='ignore' is invalid"):
    webdataset.WebDatasetPairSource("unused.tar", on_damaged_shard="ignore")


def test_a_shard_that_lost_samples_since_the_first_start_is_damaged(tmp_path):
  """No manifest (shards from another tool): the run's index directory remembers the counts."""
  write_shard(tmp_path / "a.tar", keyed(range(8)))
  integrity.manifest_path(tmp_path / "a.tar").unlink()
  index_dir = tmp_path / "index"
  assert webdataset.WebDatasetPairSource(str(tmp_path / "a.tar"), index_dir=index_dir).damaged == []
  write_shard(tmp_path / "a.tar", keyed(range(6)))  # replaced by a shorter, well-formed shard
  integrity.manifest_path(tmp_path / "a.tar").unlink()
  with pytest.raises(ValueError, match=r"a\.tar is damaged: it has 6 intact sample\(s\), 8 when "
                     r"this shard set was first indexed .*last good sample 's0005' \(key 5\)"):
    webdataset.WebDatasetPairSource(str(tmp_path / "a.tar"), index_dir=index_dir)
  skipped = webdataset.WebDatasetPairSource(str(tmp_path / "a.tar"), index_dir=index_dir,
                                            on_damaged_shard="skip")
  assert len(skipped) == 6 and len(skipped.damaged) == 1


def test_training_fails_on_a_damaged_shard_or_skips_it_and_says_so(tmp_path, capsys, caption_shards,
                                                                   tiny_image_text):
  shard_patterns = caption_shards(tmp_path / "shards", 32, 3)
  train_1 = tmp_path / "shards" / "train-1.tar"
  train_1.write_bytes(train_1.read_bytes()[:-15000])  # a copy cut short
  config = tiny_image_text("cc3m_fastclip_glofnd", shard_patterns)
  with pytest.raises(ValueError, match=r"cannot open the train pairs .*train-1\.tar is damaged "
                     r"at byte \d+: .*last good sample .*on_damaged_shard='skip'"):
    loop.train_and_evaluate(config, tmp_path / "run")
  config.data.on_damaged_shard = "skip"
  run = image_text.ClipRun.__new__(image_text.ClipRun)  # only its data side: no model, no step
  run.config, run.workdir = config, tmp_path / "run"
  source, report = run.open_split("train")
  assert report["damaged_shards"]["count"] == 1
  assert "train-1.tar is damaged at byte" in report["damaged_shards"]["shards"][0]
  assert len(source) < 64  # the pairs past the cut are gone, and said to be
  assert ("train split 'train': 1 damaged shard(s), only their intact samples are used "
          "(data.on_damaged_shard='skip'): shard ") in capsys.readouterr().out
