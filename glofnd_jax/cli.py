"""Command-line entry point: ``glofnd-jax <command> ...`` (``glofnd-jax CMD --help`` for each).

  glofnd-jax train --config NAME_OR_FILE --workdir DIR [--no-evaluate] [--config.key=value ...]
  glofnd-jax eval --workdir DIR
  glofnd-jax convert-folder SRC_DIR OUT_DIR [--val-fraction F --test-fraction F] [--image-size N]
  glofnd-jax validate-shards PATTERN [--verify-images]
  glofnd-jax rekey-shards PATTERN OUT_DIR [--all]
  glofnd-jax train-tokenizer (--captions FILE | --shards PATTERN) --out tokenizer.json
  glofnd-jax demo [...]

Every flag is ``--kebab-case`` (an older ``--snake_case`` spelling is accepted). A mistake in
the config, the data or the work directory prints one ``error: ...`` line naming the field or
file and the fix, exit status 2; ``--debug`` (before or after the command) shows its traceback.

Exit status of ``train``: 0 when the run finished *and* when it stopped on SIGTERM after saving a
checkpoint (or before its first step): ``WORKDIR/status.json`` says which (``"finished"``,
``"preempted"``). Not a distinct code on purpose: under ``srun --kill-on-bad-exit`` a non-zero
exit of the first process to finish its save would kill the others still saving. 1: a crash
or a non-finite stop; 2: bad command-line flags or a mistake in the config, the data or the
work directory (e.g. a refused resume); 143: killed
by SIGTERM before the handler was installed (while importing). ``launch/slurm.sbatch`` requeues
on 0-but-not-finished and on signals, never on 1 or 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

from glofnd_jax import arguments, errors

HELP = {
    "train": "train a config (and evaluate): --config NAME_OR_FILE --workdir DIR [--config.x=v]",
    "eval": "evaluate the latest checkpoint of a run: --workdir DIR",
    "convert-folder": "folder of class subfolders -> our ArrayRecord format (with splits)",
    "validate-shards": "check image-caption webdataset shards against the index contract",
    "rekey-shards": "write copies of webdataset shards with a key in every sample",
    "train-tokenizer": "train a BPE caption tokenizer: --captions FILE | --shards PATTERN --out F",
    "demo": "functional example: SogCLR +/- GloFND on synthetic clusters",
}

OVERRIDES_HELP = """\
config overrides:
  --config.KEY=VALUE    set any key of the config (repeatable; dotted for sections), e.g.
                        --config.epochs=5 --config.glofnd.mode=fnd --config.data.image_size=32.
                        A value is read as the type of the key's default (true/false, numbers,
                        a tuple literal like '(1.0, 0.1)', text). Every key with its meaning:
                        glofnd_jax/config/unimodal.py (base_config) and
                        glofnd_jax/config/image_text.py; a misspelt key is an error naming the
                        closest one.

recipes installed with the package (--config NAME): {recipes}
"""


def version() -> str:
  try:
    return importlib.metadata.version("glofnd-jax")
  except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
    return "unknown (not installed)"


def top_parser() -> arguments.ArgumentParser:
  lines = [f"  {name:17} {text}" for name, text in HELP.items()]
  parser = arguments.ArgumentParser(
      prog="glofnd-jax", usage="glofnd-jax [--version] [--debug] <command> [options]",
      description="GloFND for contrastive learning in JAX.\n\ncommands:\n" + "\n".join(lines)
      + "\n\n`glofnd-jax CMD --help` lists every flag of a command with its default.")
  parser.add_argument("--version", action="version", version=f"glofnd-jax {version()}")
  parser.add_argument("--debug", action="store_true",
                      help="show the full traceback of any error (also after the command)")
  return parser


def train_parser() -> arguments.ArgumentParser:
  from glofnd_jax.config import overrides
  parser = arguments.ArgumentParser(
      prog="glofnd-jax train",
      description="Train a config in a work directory (resuming from its latest checkpoint), "
      "then evaluate.\n\nexample:\n  glofnd-jax train --config digits_sogclr_glofnd "
      "--workdir workdir/digits --config.epochs=5",
      epilog=OVERRIDES_HELP.format(recipes=", ".join(overrides.recipe_names())))
  parser.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                      help="a recipe's name (e.g. digits_sogclr_glofnd) or a config file path "
                      "(FILE:ARG calls get_config(ARG))")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="the run's directory: config, checkpoints, metrics, plots, results")
  parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                      help="evaluate after training; --no-evaluate only trains (then "
                      "`glofnd-jax eval --workdir DIR` evaluates the latest checkpoint)")
  parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
  return parser


def eval_parser() -> arguments.ArgumentParser:
  parser = arguments.ArgumentParser(
      prog="glofnd-jax eval",
      description="Evaluate the latest checkpoint of a run with the config it saved.")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="the run's directory (written by `glofnd-jax train`)")
  parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
  return parser


def _train(argv) -> int:
  from glofnd_jax.config import overrides
  # --noevaluate: absl's spelling, kept for scripts written against earlier versions.
  argv = ["--no-evaluate" if a == "--noevaluate" else a for a in argv]
  rest, config_overrides = overrides.split_overrides(argv)
  args = train_parser().parse_args(rest)
  config = overrides.load(args.config)
  overrides.apply(config, config_overrides)
  from glofnd_jax.training import loop
  loop.train_and_evaluate(config, args.workdir, evaluate=args.evaluate)
  return 0


def _eval(argv) -> int:
  args = eval_parser().parse_args(argv)
  from glofnd_jax.training import loop
  loop.evaluate_workdir(args.workdir)
  return 0


def _module_main(module: str, function: str = "main"):
  def run(argv) -> int:
    status = getattr(importlib.import_module(module), function)(argv)
    return status if isinstance(status, int) else 0  # demo returns its rows
  return run


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "convert-folder": _module_main("glofnd_jax.data.folder"),
    "validate-shards": _module_main("glofnd_jax.data.pairs.shard_tools", "validate_main"),
    "rekey-shards": _module_main("glofnd_jax.data.pairs.shard_tools", "rekey_main"),
    "train-tokenizer": _module_main("glofnd_jax.data.tokenizer"),
    "demo": _module_main("glofnd_jax.demo"),
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in argv
  options = []
  while argv and argv[0].startswith("-"):  # options before the command
    options.append(argv.pop(0))
  if not argv or "-h" in options or "--help" in options or "--version" in options:
    parser = top_parser()
    try:
      parser.parse_args(options)
    except SystemExit as exit_:
      return exit_.code or 0
    parser.print_help()
    return 0
  command = argv[0]
  # train and eval list --debug in their help; the other commands' parsers do not know it.
  rest = [a for a in argv[1:] if a != "--debug" or command in ("train", "eval")]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} "
          "(`glofnd-jax --help` describes them)", file=sys.stderr)
    return 2
  try:
    return COMMANDS[command](rest)
  except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
    return exit_.code if isinstance(exit_.code, int) else 0
  except Exception as error:  # pylint: disable=broad-except  # sorted into input mistakes/crashes
    if debug or not errors.is_user_error(error):
      raise
    print(f"error: {errors.one_line(error)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
