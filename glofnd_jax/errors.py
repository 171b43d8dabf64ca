"""Mistakes the user fixes (config, data, work directory), told apart from genuine crashes.

``glofnd-jax`` prints a :class:`UserError` (or an error raised while a run is set up, see
:func:`setup_phase`) as one ``error: ...`` line and exits with status 2; anything else is a crash
and keeps its traceback. Each class also derives from the built-in type callers catch
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` still works.
"""

from __future__ import annotations

import contextlib


class UserError(Exception):
  """A mistake in what the user gave; the message names the field or file and the fix."""


class ConfigError(UserError, ValueError):
  """A config field (``config.x``) or command-line flag is wrong."""


class DataError(UserError, ValueError):
  """A dataset, split or record cannot be used as configured."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the run needs does not exist."""


class WorkdirError(UserError, RuntimeError):
  """The work directory cannot be used (in use by another run, not a run's directory, ...)."""


# What a run's setup raises for bad input: the readers and builders below the CLI raise these
# built-in types with messages that name the field and the fix.
_SETUP_ERRORS = (ValueError, KeyError, OSError)


@contextlib.contextmanager
def setup_phase():
  """Marks errors of the built-in input-error types raised inside as user errors.

  Wraps what happens before a run's first step (reading the config, opening data, the work
  directory and checkpoints, the preflight checks): an exception there is about the input, not a
  crash of training. The exception itself is re-raised unchanged (same type, same traceback).
  """
  try:
    yield
  except _SETUP_ERRORS as error:
    error.glofnd_user_error = True
    raise


def is_user_error(error: BaseException) -> bool:
  """Whether ``error`` is reported as one line (a :class:`UserError` or raised in setup)."""
  return isinstance(error, UserError) or getattr(error, "glofnd_user_error", False)


def one_line(error: BaseException) -> str:
  """The error's message on one line (a ``KeyError``'s quotes removed)."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(text.split()) or type(error).__name__
