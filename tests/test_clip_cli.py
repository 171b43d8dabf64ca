"""The digits image-text default through the CLI: train (one epoch), then eval."""

from glofnd_jax import cli


def test_digits_default_through_the_cli(tmp_path, capsys):
  """The documented command on the real digits-caption shards, one epoch, then `glofnd-jax eval`."""
  workdir = tmp_path / "run"
  code = cli.main(["train", "--config=configs/digits_clip_glofnd.py", f"--workdir={workdir}",
                   "--config.epochs=1", "--config.data.read_threads=0",
                   # one epoch of a recipe whose detection starts at epoch 10, on purpose
                   "--config.glofnd.allow_late_start=true"])
  assert code == 0
  out = capsys.readouterr().out
  assert "trained a tokenizer on 1258 training captions" in out
  assert "Zero-shot top-1 (10 classes, 359 images)" in out
  assert (workdir / "data" / "digits_captions_seed0" / "train-00000.tar").exists()
  assert (workdir / "tokenizer.json").exists()
  assert cli.main(["eval", f"--workdir={workdir}"]) == 0
  out = capsys.readouterr().out
  assert "evaluating step 9" in out and "text->image R@10" in out and "FN precision" in out
