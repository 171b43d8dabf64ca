"""Every input mistake of docs/RUNNING_AT_SCALE.md's list fails early with a message that names
the field, its value and the fix. Each case checks the message, not just the exception type."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from glofnd_jax import cli, per_sample, sharding
from glofnd_jax.data import records
from glofnd_jax.training import checkpoint as checkpoint_lib
from glofnd_jax.training import loop
from glofnd_jax.training.unimodal import UnimodalRun


def _fails(config, error=ValueError, *, workdir="/tmp/unused"):
  """The message of building the run of ``config`` (no training, no compilation)."""
  with pytest.raises(error) as raised:
    UnimodalRun(config, workdir)
  return str(raised.value)


@pytest.mark.parametrize("field, value, expected", [
    ("glofnd.alpha", 1.5, "config.glofnd.alpha=1.5 is invalid: alpha is the fraction"),
    ("glofnd.alpha", 0.0, "must lie in (0, 1), e.g. 0.01"),
    ("glofnd.alphas", (0.01, -0.2), "config.glofnd.alphas=(0.01, -0.2) is invalid: every alpha "
                                    "must lie in (0, 1), and -0.2 does not"),
])
def test_alpha_outside_open_unit_interval(field, value, expected, tiny_unimodal):
  assert expected in _fails(tiny_unimodal(**{field: value}))


def test_start_update_after_start_mask(tiny_unimodal):
  message = _fails(tiny_unimodal(**{"glofnd.start_update_epoch": 5, "glofnd.start_mask_epoch": 2}))
  assert "config.glofnd.start_update_epoch=5 is invalid" in message
  assert "glofnd.start_mask_epoch=2" in message
  assert "Set start_mask_epoch >= start_update_epoch" in message


@pytest.mark.parametrize("field, value, expected", [
    ("optim.lr", 0.0, "config.optim.lr=0.0 is invalid: the learning rate must be positive"),
    ("optim.lr", -0.1, "config.optim.lr=-0.1 is invalid"),
    ("glofnd.lr", -0.05, "config.glofnd.lr=-0.05 is invalid: the threshold learning rate must be "
                         "positive"),
    ("loss.temperature", 0.0, "config.loss.temperature=0.0 is invalid: the temperature must be "
                              "positive (e.g. 0.1)"),
    ("nonfinite", "ignore", "config.nonfinite='ignore' is invalid: choose one of stop, skip, off"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0 is invalid: keep at least one checkpoint"),
    ("keep_checkpoints", -2, "config.keep_checkpoints=-2 is invalid: keep at least one"),
])
def test_non_positive_rates_and_unknown_policies(field, value, expected, tiny_unimodal):
  assert expected in _fails(tiny_unimodal(**{field: value}))


def test_per_sample_arrays_smaller_than_the_dataset():
  state = {"lam": jnp.zeros(64), "u": jnp.zeros(64), "shared": jnp.zeros(1)}
  per_sample.check_capacity(state, 64)  # exactly big enough
  with pytest.raises(ValueError) as raised:
    per_sample.check_capacity(state, 100, "state")
  message = str(raised.value)
  assert "state['lam'] has 64 rows but the dataset has 100 samples" in message
  assert "Initialise the state with num_samples=100" in message


def test_checkpoint_from_a_smaller_dataset(tmp_path, tiny_unimodal):
  """Resuming after the dataset grew: the checkpoint's per-sample arrays are too short."""
  old = checkpoint_lib.config_fingerprint(tiny_unimodal(), 64)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, fingerprint=old)
  checkpointer.save(3, {"u": jnp.zeros(64)})
  checkpointer.close()
  new = checkpoint_lib.config_fingerprint(tiny_unimodal(), 100)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, fingerprint=new)
  try:
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as raised:
      checkpointer.restore({"u": jnp.zeros(100)})
  finally:
    checkpointer.close()
  message = str(raised.value)
  assert "num_samples: checkpoint 64, now 100" in message
  assert "The dataset now has 100 samples but the checkpoint's per-sample arrays" in message
  assert "start a new run in another checkpoint directory" in message


def test_checkpoint_from_an_incompatible_config(tmp_path, tiny_unimodal):
  saved = tiny_unimodal()
  checkpointer = checkpoint_lib.Checkpointer(
      tmp_path, fingerprint=checkpoint_lib.config_fingerprint(saved, 64))
  checkpointer.save(6, {"u": jnp.zeros(64)})
  checkpointer.close()
  changed = tiny_unimodal(**{"glofnd.mode": "fnd", "model.proj_dim": 32, "loss.name": "simclr",
                       "glofnd.alphas": (0.01, 0.05)})
  # Tunable numbers (temperature, learning rates, epochs) may change on resume.
  compatible = tiny_unimodal(**{"loss.temperature": 0.3, "optim.lr": 0.01, "epochs": 9})
  assert (checkpoint_lib.config_fingerprint(compatible, 64)
          == checkpoint_lib.config_fingerprint(saved, 64))
  checkpointer = checkpoint_lib.Checkpointer(
      tmp_path, fingerprint=checkpoint_lib.config_fingerprint(changed, 64))
  try:
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as raised:
      checkpointer.restore({"u": jnp.zeros(64)})
  finally:
    checkpointer.close()
  message = str(raised.value)
  assert "checkpoint step 6" in message and str(tmp_path) in message
  for difference in ("glofnd.mode: checkpoint 'glofnd', now 'fnd'",
                     "model.proj_dim: checkpoint 16, now 32",
                     "loss.name: checkpoint 'sogclr', now 'simclr'",
                     "glofnd.alphas: checkpoint [0.05], now [0.01, 0.05]"):
    assert difference in message, (difference, message)
  assert "Resume with the config it was written with, or start a new run in another " in message


@pytest.mark.parametrize("bad", [-1, 64, 1000])
def test_indices_outside_the_dataset(bad, tmp_path, tiny_unimodal):
  run = UnimodalRun(tiny_unimodal(), tmp_path)
  index = np.arange(16, dtype=np.int32)
  index[5] = bad
  local = {"image": np.zeros((16, 8, 8, 1), np.uint8), "index": index,
           "label": np.zeros(16, np.int32)}
  with pytest.raises(ValueError) as raised:
    run.global_batch(local)
  message = str(raised.value)
  assert f"batch index holds 1 value(s) outside [0, 64) (e.g. {bad})" in message
  assert "Fix the data source's indices" in message


def test_global_batch_not_divisible_by_the_device_count():
  eight_devices = types.SimpleNamespace(shape={sharding.DATA: 8})  # only the axis size is read
  sharding.check_global_batch(16, eight_devices, field="config.batch_size")
  with pytest.raises(ValueError) as raised:
    sharding.check_global_batch(12, eight_devices, field="config.batch_size")
  assert str(raised.value) == (
      "config.batch_size=12 is not a multiple of the 8 devices on the 'data' axis; choose a batch "
      "size divisible by 8 (e.g. 8 or 16).")


def test_batch_larger_than_the_dataset(tiny_unimodal):
  assert "config.batch_size=1000 is larger than the dataset (64 samples)" in _fails(
      tiny_unimodal(batch_size=1000))


def test_missing_data_dir(tiny_unimodal):
  message = _fails(tiny_unimodal(**{"data.name": "arrayrecord", "data.data_dir": ""}))
  assert "config.data.data_dir='' is invalid" in message
  assert "set --config.data.data_dir=DIR" in message


def test_data_dir_that_does_not_exist(tmp_path, tiny_unimodal):
  missing = str(tmp_path / "nowhere")
  message = _fails(tiny_unimodal(**{"data.name": "arrayrecord", "data.data_dir": missing}))
  assert f"config.data.data_dir='{missing}' is invalid: the directory does not exist" in message


def test_data_dir_without_a_dataset(tmp_path, tiny_unimodal):
  message = _fails(tiny_unimodal(**{"data.name": "arrayrecord", "data.data_dir": str(tmp_path)}),
                   FileNotFoundError)
  assert "cannot open split 'train' of config.data.name='arrayrecord'" in message
  assert f"config.data.data_dir='{tmp_path}'" in message
  assert "convert_folder" in message  # how to make one


def test_unknown_dataset(tiny_unimodal):
  message = _fails(tiny_unimodal(**{"data.name": "cifar11"}))
  assert "config.data.name='cifar11'" in message and "unknown dataset" in message
  assert "digits" in message and "tfds:<name>" in message  # the known names


def test_empty_dataset(tmp_path, tiny_unimodal):
  records.write_split(tmp_path, "train", [])
  records.write_info(tmp_path, records.ImageDatasetInfo(
      num_classes=2, class_names=["a", "b"], image_shape=[8, 8, 1], encoding="raw",
      splits={"train": 0}))
  message = _fails(tiny_unimodal(**{"data.name": "arrayrecord", "data.data_dir": str(tmp_path)}))
  assert "config.data.train_split='train' of config.data.name='arrayrecord' is empty" in message
  assert "point data_dir at the prepared dataset or name a non-empty split" in message


def test_empty_synthetic_dataset(tiny_unimodal):
  message = _fails(tiny_unimodal(**{"data.synthetic_num_samples": 0}))
  assert "config.data.synthetic_num_samples=0 is invalid" in message


def test_image_shape_different_from_the_model(tmp_path, tiny_unimodal):
  run = UnimodalRun(tiny_unimodal(), tmp_path)  # image_size 8, channels 1
  local = {"image": np.zeros((16, 10, 10, 3), np.uint8), "index": np.arange(16, dtype=np.int32),
           "label": np.zeros(16, np.int32)}
  with pytest.raises(ValueError) as raised:
    run.global_batch(local)
  message = str(raised.value)
  assert "batch images have shape (10, 10, 3) but the model was built for (8, 8, 1)" in message
  assert "config.data.image_size=8" in message and "config.data.channels=1" in message


def test_tokenizer_file_missing(tmp_path):
  tokenizer = pytest.importorskip("glofnd_jax.data.tokenizer")
  pytest.importorskip("tokenizers")
  path = tmp_path / "tokenizer.json"
  with pytest.raises(FileNotFoundError) as raised:
    tokenizer.ClipTokenizer(path)
  message = str(raised.value)
  assert f"tokenizer file {path} does not exist" in message
  assert "glofnd-jax train-tokenizer" in message and "tokenizer.path" in message


def test_misspelt_config_key_in_a_config(tiny_unimodal):
  config = tiny_unimodal()
  config.glofnd.alpah = 0.1  # ConfigDict takes any new attribute: it must not be ignored
  message = _fails(config)
  assert "config.glofnd.alpah is not a known config key (value 0.1)" in message
  assert "did you mean config.glofnd.alpha?" in message


def test_misspelt_config_key_on_the_command_line(tmp_path, capsys, train_cli):
  code = cli.main(["train", f"--config={train_cli.recipe}", f"--workdir={tmp_path}",
                   "--config.optim.learning_rate=0.1", "--config.glofnd.alpah=0.1"])
  assert code == 2
  error = capsys.readouterr().err
  assert "a config override names a key the config does not have" in error
  assert "config.glofnd.alpah: did you mean config.glofnd.alpha?" in error
  assert "config.optim.learning_rate: config.optim has no key 'learning_rate' (it has " in error
  assert " lr," in error


def test_train_reports_before_touching_the_workdir(tmp_path, tiny_unimodal):
  """Validation runs before anything is written: a bad config leaves no checkpoint behind."""
  with pytest.raises(ValueError, match="config.glofnd.alpha=2.0"):
    loop.train_and_evaluate(tiny_unimodal(**{"glofnd.alpha": 2.0}), tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_workdir_given_as_a_url(tiny_unimodal):
  with pytest.raises(ValueError) as raised:
    loop.train_and_evaluate(tiny_unimodal(), "gs://bucket/run")
  message = str(raised.value)
  assert "--workdir='gs://bucket/run' is a URL" in message
  assert "Mount the bucket on every host" in message
