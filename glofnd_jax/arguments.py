"""The one flag style of every ``glofnd-jax`` command: ``--kebab-case``, defaults in ``--help``.

Every command's parser is an :class:`ArgumentParser`: ``--help`` lists each flag with its
default, an older ``--snake_case`` spelling of a flag is accepted as its ``--kebab-case`` form,
and a usage mistake prints one ``error: ...`` line (exit status 2) instead of argparse's usage
block.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Sequence


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Each optional flag's default after its help; the description's line breaks kept."""

  @staticmethod
  def _has_default(action) -> bool:
    return bool(action.option_strings) and not action.required and action.default not in (
        None, argparse.SUPPRESS)

  def _format_action(self, action):
    if action.help is None and self._has_default(action):  # a flag without help still shows it
      action = copy.copy(action)
      action.help = "(default: %(default)s)"
    return super()._format_action(action)

  def _get_help_string(self, action):
    text = action.help or ""
    if "%(default)" not in text and self._has_default(action):
      text += " (default: %(default)s)"
    return text


def kebab_case(argv: Sequence[str]) -> list[str]:
  """``--key_field=x`` -> ``--key-field=x``; values, positionals and ``--config.a_b`` untouched."""
  out = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config."):
      name, sep, value = arg.partition("=")
      arg = name.replace("_", "-") + sep + value
    out.append(arg)
  return out


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` with the package's conventions (see the module docstring)."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", _HelpFormatter)
    super().__init__(*args, **kwargs)

  def parse_known_args(self, args=None, namespace=None):
    args = sys.argv[1:] if args is None else args
    return super().parse_known_args(kebab_case(args), namespace)

  def error(self, message):
    self.exit(2, f"error: {message} (`{self.prog} --help` lists every flag)\n")
