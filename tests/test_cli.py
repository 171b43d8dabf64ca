"""The front door: help for every command, --version, one-line errors (exit 2), recipes by name."""

from __future__ import annotations

import re

import pytest

from glofnd_jax import cli
from glofnd_jax.config import common, image_text, overrides, unimodal


def test_bare_command_and_help_list_the_commands(capsys):
  for argv in ([], ["--help"], ["-h"]):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in cli.COMMANDS), out


def test_version(capsys):
  assert cli.main(["--version"]) == 0
  assert re.match(r"glofnd-jax \S+", capsys.readouterr().out)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_of_every_command_lists_every_flag_with_its_default(command, capsys):
  assert cli.main([command, "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: glofnd-jax {command}")
  flags = re.findall(r"^  (--[a-z][a-z0-9-]*)", out, re.MULTILINE)
  assert flags, out
  assert not [f for f in flags if "_" in f]  # one flag style
  # Every optional flag with a default shows it (store_true flags show False).
  for block in re.split(r"\n(?=  --)", out.split("options:", 1)[1].split("\n\n")[0])[1:]:
    if "required" not in block and not re.search(r"--(help|version)\b", block):
      flag = block.split()[0]
      assert "(default:" in block or flag in _NO_DEFAULT, block
  if command == "train":
    assert "--config.KEY=VALUE" in out and "glofnd_jax/config/unimodal.py" in out
    assert "digits_sogclr_glofnd" in out  # the installed recipes


# Flags whose absence means something (no default value to show).
_NO_DEFAULT = {"--config", "--workdir", "--split", "--image-size", "--data-size", "--json",
               "--start", "--captions", "--shards", "--out"}


def _one_line_error(capsys, argv) -> str:
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
  assert "Traceback" not in captured.out + captured.err
  return lines[0]


def test_config_errors_are_one_line(tmp_path, capsys):
  run = ["train", "--config", "digits_sogclr_glofnd", "--workdir", str(tmp_path / "run")]
  assert "config.glofnd.alpha=2.0 is invalid" in _one_line_error(
      capsys, [*run, "--config.glofnd.alpha=2"])
  assert "did you mean config.glofnd.alpha?" in _one_line_error(
      capsys, [*run, "--config.glofnd.alpah=0.1"])
  assert "--config.epochs='x' is not a int" in _one_line_error(capsys, [*run, "--config.epochs=x"])
  assert "is neither a config file nor an installed recipe" in _one_line_error(
      capsys, ["train", "--config", "nope", "--workdir", str(tmp_path)])
  assert "the following arguments are required: --workdir" in _one_line_error(
      capsys, ["train", "--config", "digits_sogclr_glofnd"])
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_file_without_get_config(tmp_path, capsys):
  path = tmp_path / "mine.py"
  path.write_text("X = 1\n")
  line = _one_line_error(capsys, ["train", "--config", str(path), "--workdir", str(tmp_path)])
  assert "has no get_config()" in line and "Add `def get_config():`" in line


def test_data_and_workdir_errors_are_one_line(tmp_path, capsys):
  line = _one_line_error(capsys, ["train", "--config", "digits_sogclr_glofnd", "--workdir",
                                  str(tmp_path / "run"), "--config.data.name=arrayrecord",
                                  f"--config.data.data_dir={tmp_path / 'missing'}"])
  assert "config.data.data_dir=" in line and "does not exist" in line
  line = _one_line_error(capsys, ["eval", "--workdir", str(tmp_path)])
  assert "config.json does not exist" in line
  assert _one_line_error(capsys, ["trian"]).startswith("error: unknown command 'trian'")


def test_debug_shows_the_traceback(tmp_path):
  with pytest.raises(FileNotFoundError):
    cli.main(["--debug", "eval", "--workdir", str(tmp_path)])


def test_recipe_by_name_from_another_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = overrides.load("digits_sogclr_glofnd")
  assert config.epochs == 60 and config.data.name == "digits"
  path, _ = overrides.resolve("digits_sogclr_glofnd.py")
  assert path.parent == overrides.RECIPES_DIR and path.is_file()
  assert overrides.load(str(path)).to_dict() == config.to_dict()  # a path still works
  assert "digits_sogclr_glofnd" in overrides.recipe_names()


@pytest.mark.parametrize("name", overrides.recipe_names())
def test_every_recipe_loads_by_name_with_known_keys_and_valid_values(name):
  """Also the recipes built on another recipe file (glyphs on digits, the cc3m variants on
  cc3m_fastclip): each sets only keys of its task's schema and passes the shared checks."""
  config = overrides.load(name)
  schema = unimodal.base_config() if config.task == "unimodal" else image_text.clip_base_config()
  common.check_known_keys(config, schema)
  common.validate(config)


def test_override_values_follow_the_default_types():
  config = overrides.load("digits_sogclr_glofnd")
  overrides.apply(config, [("glofnd.init_quantile", "true"), ("epochs", "3"),
                           ("glofnd.alpha", "0.1"), ("eval.probe_fractions", "(1.0, 0.5)"),
                           ("glofnd.mode", "fnd")])
  assert config.glofnd.init_quantile is True and config.epochs == 3
  assert config.glofnd.alpha == 0.1 and tuple(config.eval.probe_fractions) == (1.0, 0.5)
  assert config.glofnd.mode == "fnd"
  rest, pairs = overrides.split_overrides(["--workdir=x", "--config.epochs", "4",
                                           "--config.loss.name=simclr"])
  assert rest == ["--workdir=x"] and pairs == [("epochs", "4"), ("loss.name", "simclr")]
