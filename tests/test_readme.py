"""The README's functional-API example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
  text = README.read_text()
  match = re.search(r"<!-- readme-example -->\s*```python\n(.*?)```", text, re.S)
  assert match, "README lost its <!-- readme-example --> python block"
  return match.group(1)


def test_readme_example_runs(capsys):
  namespace = {}
  exec(compile(_example(), str(README), "exec"), namespace)
  out = capsys.readouterr().out
  assert re.search(r"loss -?\d+\.\d+\s+kept \d\.\d+\s+mean lambda -?\d\.\d+", out), out
  assert float(namespace["metrics"]["kept_fraction"]) <= 1.0
  assert namespace["state"].thresholds[0].lam.shape == (1000,)
