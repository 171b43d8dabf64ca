"""The training stack end to end: every config runs, resume is exact, eval CLI, config errors."""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from glofnd_jax import cli
from glofnd_jax.config import overrides
from glofnd_jax.config.common import load_config_file
from glofnd_jax.training import loop, plots

CONFIGS = sorted(p for p in (pathlib.Path(__file__).resolve().parent.parent / "configs").glob("*.py")
                 if not p.name.startswith("_"))  # __init__.py makes the recipes a package
# Image-text configs (task "clip") are run by tests/test_clip_train.py.
UNIMODAL_CONFIGS = [p for p in CONFIGS if load_config_file(p).get("task", "unimodal") == "unimodal"]


@pytest.mark.parametrize("path", UNIMODAL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_trains_and_evaluates(path, tmp_path, tiny_unimodal):
  config = tiny_unimodal(path)
  results = loop.train_and_evaluate(config, tmp_path)
  assert 0.0 <= results["knn"]["top1"] <= 1.0
  assert set(results["linear_probe"]) == {"1", "0.25"}
  assert 0.0 <= results["transfer"]["synthetic"]["accuracy"] <= 1.0
  assert "precision" in results["false_negatives"]
  assert results["lambda_error"]["num_samples"] == 64
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["name"] == config.model.name
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 8 and all(np.isfinite(r["train/loss"]) for r in rows)
  for name in ("loss.png", "kept_fraction.png", "lambda_histogram.png", "results.json"):
    assert (tmp_path / name).exists(), name


def _final_arrays(workdir):
  manager = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints")
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  leaves = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
            for x in jax.tree.leaves(restored["state"])]
  return step, leaves


def test_resume_is_exact(tmp_path, tiny_unimodal):
  """Stopping mid-run and resuming gives bit-identical parameters and per-sample arrays."""
  config = tiny_unimodal(epochs=3)
  loop.train_and_evaluate(config, tmp_path / "straight", evaluate=False)
  loop.train_and_evaluate(config, tmp_path / "split", evaluate=False, stop_after_steps=5)
  loop.train_and_evaluate(config, tmp_path / "split", evaluate=False)
  step_a, leaves_a = _final_arrays(tmp_path / "straight")
  step_b, leaves_b = _final_arrays(tmp_path / "split")
  assert step_a == step_b == 12
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_train_then_eval(tmp_path, capsys, train_cli):
  config_file = train_cli.recipe
  workdir = tmp_path / "run"
  overrides = ["--config.data.name=synthetic", "--config.data.synthetic_num_samples=64",
               "--config.batch_size=16", "--config.epochs=1", "--config.eval.knn_k=5",
               "--config.glofnd.start_update_epoch=0", "--config.glofnd.start_mask_epoch=0",
               "--config.model.proj_hidden_dim=16", "--config.data.read_threads=0"]
  assert cli.main(["train", f"--config={config_file}", f"--workdir={workdir}", *overrides]) == 0
  assert "kNN top-1" in capsys.readouterr().out
  # Every plot (a new one joins RUN_PLOTS); false_negatives.png is drawn only when some anchor has
  # a flagged negative (tests/test_fn_picture.py: what it shows).
  drawn = sorted(p.name for p in workdir.glob("*.png"))
  assert drawn == sorted((*plots.RUN_PLOTS, plots.FALSE_NEGATIVES_PLOT))
  (workdir / "false_negatives.png").unlink()
  assert cli.main(["eval", f"--workdir={workdir}"]) == 0
  out = capsys.readouterr().out
  assert "evaluating step 4" in out and "Linear probe" in out
  assert (workdir / "false_negatives.png").exists()


def test_cli_reports_misspelt_config_key(tmp_path, capsys, train_cli):
  config_file = train_cli.recipe
  code = cli.main(["train", f"--config={config_file}", f"--workdir={tmp_path}",
                   "--config.glofnd.alpah=0.1"])
  assert code == 2
  assert "alpah" in capsys.readouterr().err


def test_the_command_line_runs_train_the_tiny_config(train_cli, tiny_unimodal):
  """``train_cli``'s flags, read as the CLI reads them, give the in-process tiny config: the
  subprocess tests train what the in-process ones do (and evaluate as the recipe says)."""
  rest, flags = overrides.split_overrides(train_cli.flags)
  assert rest == []
  from_cli = overrides.load(str(train_cli.recipe))
  overrides.apply(from_cli, flags)
  expected = tiny_unimodal(train_cli.recipe)
  expected.eval = from_cli.eval
  assert from_cli.to_dict() == expected.to_dict()


def test_bad_config_values_name_the_field(tmp_path, tiny_unimodal):
  config = tiny_unimodal()
  config.glofnd.start_update_epoch = 5
  config.glofnd.start_mask_epoch = 2
  with pytest.raises(ValueError, match="glofnd.start_update_epoch=5"):
    loop.train_and_evaluate(config, tmp_path)
  config = tiny_unimodal()
  config.batch_size = 1000
  with pytest.raises(ValueError, match="batch_size=1000"):
    loop.train_and_evaluate(config, tmp_path)
