"""Every repository path and ``glofnd_jax.*`` name that README.md, docs/ and configs/ mention exists.

A path is anything starting with ``glofnd_jax/``, ``configs/``, ``benchmarks/``, ``docs/`` or
``launch/``. A placeholder (``configs/NAME.py``) and a glob stand for at least one existing
file. A dotted name (``glofnd_jax.data.pairs.screening.screen_samples``) must import
as a module or resolve to an attribute of one.
"""

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "configs").glob("*.py"))]
# Not inside another path (``workdir/docs/x``) or a dotted name.
PATH = re.compile(r"(?<![\w/.~-])((?:glofnd_jax|configs|benchmarks|docs|launch)/[\w./*-]*)")
DOTTED = re.compile(r"(?<![\w.])glofnd_jax(?:\.[A-Za-z_]\w*)+")
PLACEHOLDER = re.compile(r"\b(?:NAME|DIR)\b")  # the words the documents use for "any"


def mentioned(pattern: re.Pattern) -> list[tuple[str, str]]:
  found = set()
  for document in DOCUMENTS:
    for match in pattern.finditer(document.read_text()):
      found.add((match.group(0).rstrip(".,:;"), document.relative_to(ROOT).as_posix()))
  return sorted(found)


def path_exists(path: str) -> bool:
  pattern = PLACEHOLDER.sub("*", path)
  if "*" in pattern:
    return any(ROOT.glob(pattern))
  return (ROOT / path).exists()


def name_resolves(name: str) -> bool:
  parts = name.split(".")
  for split in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    for attribute in parts[split:]:
      if not hasattr(obj, attribute):
        return False
      obj = getattr(obj, attribute)
    return True
  return False


def test_the_documents_mention_paths_and_names():
  # The extraction itself works: a regression to zero matches would pass everything below.
  assert len(mentioned(PATH)) > 30 and len(mentioned(DOTTED)) > 5


def test_every_mentioned_path_exists():
  missing = [f"{path} (in {where})" for path, where in mentioned(PATH) if not path_exists(path)]
  assert missing == []


def test_every_mentioned_glofnd_jax_name_resolves():
  missing = [f"{name} (in {where})" for name, where in mentioned(DOTTED)
             if not name_resolves(name)]
  assert missing == []


@pytest.mark.parametrize("path, exists", [
    ("glofnd_jax/data/pairs/webdataset.py", True), ("glofnd_jax/data/webdataset.py", False),
    ("configs/NAME.py", True), ("configs/NAME.yaml", False), ("benchmarks/results/", True),
    ("docs/BIMODAL.md", True), ("docs/NOPE.md", False)])
def test_path_check(path, exists):
  assert path_exists(path) == exists


@pytest.mark.parametrize("name, resolves", [
    ("glofnd_jax.data.pairs.screening.screen_samples", True),
    ("glofnd_jax.data.pairs.screen_samples", False), ("glofnd_jax.config_clip", False)])
def test_name_check(name, resolves):
  assert name_resolves(name) == resolves
