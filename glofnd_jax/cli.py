"""Command-line entry point: ``glofnd-jax <command> ...``.

  glofnd-jax train --config configs/NAME.py --workdir DIR [--config.key=value ...]
  glofnd-jax eval --workdir DIR
  glofnd-jax convert-folder SRC_DIR OUT_DIR [--image_size N]
  glofnd-jax demo [...]
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

HELP = {
    "train": "train a config (and evaluate): --config FILE --workdir DIR [--config.x=v]",
    "eval": "evaluate the latest checkpoint of a run: --workdir DIR",
    "convert-folder": "folder of class subfolders -> our ArrayRecord format",
    "demo": "functional example: SogCLR +/- GloFND on synthetic clusters",
}


def _usage() -> str:
  lines = [f"  {name:15} {text}" for name, text in HELP.items()]
  return "usage: glofnd-jax <command> [options]\n\ncommands:\n" + "\n".join(lines)


def _train(argv) -> int:
  argv = ["glofnd-jax train", *argv]
  flag_values = flags.FlagValues()
  # sys_argv: the overrides are read from these arguments, not from the process's sys.argv.
  config_flags.DEFINE_config_file("config", None, "a config file from configs/",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "the run's directory", flag_values=flag_values)
  try:
    flag_values(argv)
  except flags.Error as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except (KeyError, AttributeError) as error:  # an override names a key the config lacks
    keys = [a.split("=", 1)[0][2:] for a in argv if a.startswith("--config.")]
    text = str(error.args[0] if error.args else error).replace("\\n", "\n")
    hint = text.splitlines()[-1].strip("'\\\" ")
    print(f"error: a config override names a key the config does not have "
          f"({', '.join(keys)}): {hint}", file=sys.stderr)
    return 2
  if flag_values.config is None or flag_values.workdir is None:
    print("error: train needs --config FILE and --workdir DIR", file=sys.stderr)
    return 2
  from glofnd_jax import train
  train.train_and_evaluate(flag_values.config, flag_values.workdir)
  return 0


def _eval(argv) -> int:
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "the run's directory", flag_values=flag_values)
  flag_values(["glofnd-jax eval", *argv])
  if flag_values.workdir is None:
    print("error: eval needs --workdir DIR", file=sys.stderr)
    return 2
  from glofnd_jax import train
  train.evaluate_workdir(flag_values.workdir)
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  command, rest = argv[0], argv[1:]
  if command == "train":
    return _train(rest)
  if command == "eval":
    return _eval(rest)
  if command == "convert-folder":
    from glofnd_jax.data import folder
    return folder.main(rest) or 0
  if command == "demo":
    from glofnd_jax import demo
    demo.main(rest)
    return 0
  print(_usage())
  print(f"\nerror: unknown command {command!r}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
