"""The command line's view of configs: a recipe by name or path, and ``--config.KEY=VALUE``.

``--config NAME`` names a recipe installed with the package (``glofnd_jax/recipes/NAME.py``,
e.g. ``digits_sogclr_glofnd``); anything else is a path to a config file (``configs/NAME.py``
in a checkout is the same recipe). ``FILE:ARG`` calls ``get_config(ARG)``.

An override's value is read as the type of the key it replaces: ``true``/``false`` for booleans,
numbers for numbers, a Python literal for tuples (``--config.eval.probe_fractions='(1.0, 0.1)'``),
the text itself for strings. Every key, with its meaning: ``glofnd_jax/config/unimodal.py``
(``base_config``) and ``glofnd_jax/config/image_text.py``.
"""

from __future__ import annotations

import ast
import difflib
import pathlib
from typing import Sequence

import ml_collections

from glofnd_jax import errors
from glofnd_jax.config.common import load_config_file

RECIPES_DIR = pathlib.Path(__file__).resolve().parents[1] / "recipes"


def recipe_names() -> list[str]:
  """The recipes installed with the package (``--config NAME``)."""
  return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.name.startswith("_"))


def resolve(spec: str) -> tuple[pathlib.Path, str | None]:
  """``(config file, get_config argument or None)`` of ``--config NAME_OR_PATH[:ARG]``."""
  name, _, arg = spec.partition(":")
  path = pathlib.Path(name).expanduser()
  if not path.is_file() and "/" not in name and (RECIPES_DIR / f"{path.stem}.py").is_file():
    path = RECIPES_DIR / f"{path.stem}.py"  # a recipe's name, with or without ".py"
  if not path.is_file():
    raise errors.MissingFileError(
        f"--config={name!r} is neither a config file nor an installed recipe: pass a path to a "
        f"config file or one of {', '.join(recipe_names())}.")
  return path, arg or None


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of ``--config NAME_OR_PATH[:ARG]``."""
  return load_config_file(*resolve(spec))


def _missing_key_hint(config: ml_collections.ConfigDict, key: str) -> str | None:
  """None if ``key`` (dotted) exists in ``config``, else why not and the closest key."""
  node, known = config, []
  for part in key.split("."):
    if isinstance(node, ml_collections.ConfigDict) and part in node:
      node = node[part]
      known.append(part)
      continue
    options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    close = difflib.get_close_matches(part, options, n=1)
    if close:
      return f"config.{key}: did you mean config.{'.'.join(known + close)}?"
    where = "config." + ".".join(known) if known else "the config"
    return f"config.{key}: {where} has no key {part!r} (it has {', '.join(options)})"
  return None


def parse_value(key: str, text: str, current):
  """``text`` read as the type of ``current`` (the key's value in the config file)."""
  try:
    if isinstance(current, bool):
      lowered = text.strip().lower()
      if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected true or false")
      return lowered in ("true", "1", "yes")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if current is None:  # no type to follow: a Python literal, else the text
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    value = ast.literal_eval(text)
    return tuple(value) if isinstance(current, (tuple, list)) and isinstance(
        value, (tuple, list)) else value
  except (ValueError, SyntaxError) as error:
    raise errors.ConfigError(
        f"--config.{key}={text!r} is not a {type(current).__name__} like its default "
        f"{current!r} ({error}): give a value of that type.") from None


def apply(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
  """Sets each ``(dotted key, value text)`` in ``config``; every unknown key is named at once."""
  hints = [hint for key, _ in overrides if (hint := _missing_key_hint(config, key))]
  if hints:
    raise errors.ConfigError(
        f"a config override names a key the config does not have "
        f"({', '.join('config.' + key for key, _ in overrides)}): {'; '.join(hints)}")
  for key, text in overrides:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = parse_value(key, text, node[leaf])


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """``(other arguments, [(key, value text), ...])`` from ``--config.KEY=VALUE`` (or
  ``--config.KEY VALUE``) arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      if not sep:
        if i + 1 >= len(argv):
          raise errors.ConfigError(f"--config.{key} has no value: write --config.{key}=VALUE.")
        value, i = argv[i + 1], i + 1
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides
