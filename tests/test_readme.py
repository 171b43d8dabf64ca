"""The README's functional-API example runs as written."""

import math
import pathlib
import re

import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _example(marker: str = "readme-example") -> str:
  text = README.read_text()
  match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
  assert match, f"README lost its <!-- {marker} --> python block"
  return match.group(1)


def test_readme_example_runs(capsys):
  namespace = {}
  exec(compile(_example(), str(README), "exec"), namespace)
  out = capsys.readouterr().out
  assert re.search(r"loss -?\d+\.\d+\s+kept \d\.\d+\s+mean lambda -?\d\.\d+", out), out
  assert float(namespace["metrics"]["kept_fraction"]) < 1.0  # the mask engaged
  assert namespace["state"].thresholds[0].lam.shape == (1000,)


def test_readme_pieces_define_every_name_they_use():
  """The one-by-one snippet runs on its own, in a fresh namespace."""
  namespace = {}
  exec(compile(_example("readme-pieces"), str(README), "exec"), namespace)
  assert namespace["found"].keep.shape == (2, 64, 128)
  assert float(jnp.mean(namespace["thresholds_state"].lam)) < 1.0  # lambda moved
  assert math.isfinite(float(namespace["loss"]))
