"""Preflight: what would fail after training is refused before step 1 (one line, exit 2)."""

from __future__ import annotations

import numpy as np
import pytest

from glofnd_jax import cli, errors
from glofnd_jax.config import overrides
from glofnd_jax.data import records
from glofnd_jax.training import loop


def _dataset(path, splits: dict, num_classes: int = 2):
  rng = np.random.default_rng(0)
  for split, labels in splits.items():
    records.write_split(path, split, [(rng.integers(0, 256, (8, 8, 1), np.uint8), int(y))
                                      for y in labels])
  records.write_info(path, records.ImageDatasetInfo(
      num_classes, [str(c) for c in range(num_classes)], [8, 8, 1], "raw",
      splits={s: len(v) for s, v in splits.items()}))


def _config(data_dir):
  config = overrides.load("digits_sogclr_glofnd")
  overrides.apply(config, [("data.name", "arrayrecord"), ("data.data_dir", str(data_dir)),
                           ("batch_size", "8"), ("epochs", "1"),
                           ("glofnd.start_update_epoch", "0"), ("glofnd.start_mask_epoch", "0")])
  return config


def test_missing_split_is_caught_before_step_1(tmp_path, capsys):
  _dataset(tmp_path / "data", {"train": [0, 1] * 8, "val": [0, 1]})
  with pytest.raises(errors.DataError, match=r"config.data.test_split='test'.*has no split"):
    loop.train_and_evaluate(_config(tmp_path / "data"), tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert not (tmp_path / "run" / "metrics.jsonl").exists()
  # Through the CLI: one line, exit 2.
  assert cli.main(["train", "--config", "digits_sogclr_glofnd", "--workdir", str(tmp_path / "r"),
                   "--config.data.name=arrayrecord", f"--config.data.data_dir={tmp_path / 'data'}",
                   "--config.epochs=1", "--config.glofnd.allow_late_start=true"]) == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_one_class_dataset_is_refused(tmp_path):
  _dataset(tmp_path / "data", {"train": [0] * 16, "val": [0] * 2, "test": [0] * 2}, 1)
  with pytest.raises(errors.DataError, match="the train split has 1 class"):
    loop.train_and_evaluate(_config(tmp_path / "data"), tmp_path / "run")


def test_class_missing_from_train_is_refused(tmp_path):
  _dataset(tmp_path / "data", {"train": [0, 1] * 8, "val": [0, 1], "test": [0, 2]}, 3)
  with pytest.raises(errors.DataError, match="no labelled example"):
    loop.train_and_evaluate(_config(tmp_path / "data"), tmp_path / "run")


def test_detection_schedule_outside_epochs(tmp_path):
  _dataset(tmp_path / "data", {"train": [0, 1] * 8, "val": [0, 1], "test": [0, 1]})
  config = _config(tmp_path / "data")
  config.glofnd.start_mask_epoch = 5
  with pytest.raises(errors.ConfigError, match="start_mask_epoch=5 is not before config.epochs=1"):
    loop.train_and_evaluate(config, tmp_path / "run")
