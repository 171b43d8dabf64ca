"""Command-line entry point: ``glofnd-jax <command> ...``.

  glofnd-jax train --config configs/NAME.py --workdir DIR [--noevaluate] [--config.key=value ...]
  glofnd-jax eval --workdir DIR
  glofnd-jax convert-folder SRC_DIR OUT_DIR [--image_size N]
  glofnd-jax validate-shards PATTERN [--verify_images]
  glofnd-jax rekey-shards PATTERN OUT_DIR [--all]
  glofnd-jax train-tokenizer (--captions FILE | --shards PATTERN) --out tokenizer.json
  glofnd-jax demo [...]

Exit status of ``train``: 0 when the run finished *and* when it stopped on SIGTERM after saving a
checkpoint (or before its first step): ``WORKDIR/status.json`` says which (``"finished"``,
``"preempted"``). Not a distinct code on purpose: under ``srun --kill-on-bad-exit`` a non-zero
exit of the first process to finish its save would kill the others still saving. 1: an error
(a traceback, e.g. a non-finite stop or a refused resume); 2: bad command-line flags; 143: killed
by SIGTERM before the handler was installed (while importing). ``launch/slurm.sbatch`` requeues
on 0-but-not-finished and on signals, never on 1 or 2.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

HELP = {
    "train": "train a config (and evaluate): --config FILE --workdir DIR [--config.x=v]",
    "eval": "evaluate the latest checkpoint of a run: --workdir DIR",
    "convert-folder": "folder of class subfolders -> our ArrayRecord format",
    "validate-shards": "check image-caption webdataset shards against the index contract",
    "rekey-shards": "write copies of webdataset shards with a key in every sample",
    "train-tokenizer": "train a BPE caption tokenizer: --captions FILE | --shards PATTERN --out F",
    "demo": "functional example: SogCLR +/- GloFND on synthetic clusters",
}


def _usage() -> str:
  lines = [f"  {name:15} {text}" for name, text in HELP.items()]
  return "usage: glofnd-jax <command> [options]\n\ncommands:\n" + "\n".join(lines)


def _closest_keys(argv) -> str:
  """For each ``--config.KEY=...`` the config file lacks: the closest key it has ("" if the
  config file cannot be read here)."""
  import difflib

  import ml_collections

  paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  paths += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
  if not paths:
    return ""
  path, _, arg = paths[0].partition(":")
  from glofnd_jax.config.common import load_config_file
  try:
    config = load_config_file(path, arg or None)
  except Exception:  # pylint: disable=broad-except  # only a hint: fall back to jax's message
    return ""
  hints = []
  for a in argv:
    if not a.startswith("--config."):
      continue
    key, node, known = a[len("--config."):].split("=", 1)[0], config, []
    for part in key.split("."):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        known.append(part)
        continue
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, options, n=1)
      where = "config." + ".".join(known) if known else "the config"
      hints.append(f"config.{key}: did you mean config.{'.'.join(known + close)}?" if close else
                   f"config.{key}: {where} has no key {part!r} (it has {', '.join(options)})")
      break
  return "; ".join(hints)


def _train(argv) -> int:
  argv = ["glofnd-jax train", *argv]
  flag_values = flags.FlagValues()
  # sys_argv: the overrides are read from these arguments, not from the process's sys.argv.
  config_flags.DEFINE_config_file("config", None, "a config file from configs/",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "the run's directory", flag_values=flag_values)
  flags.DEFINE_bool("evaluate", True, "evaluate after training; --noevaluate only trains (then "
                    "`glofnd-jax eval --workdir DIR` evaluates the latest checkpoint)",
                    flag_values=flag_values)
  try:
    flag_values(argv)
  except flags.Error as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except (KeyError, AttributeError) as error:  # an override names a key the config lacks
    keys = [a.split("=", 1)[0][2:] for a in argv if a.startswith("--config.")]
    text = str(error.args[0] if error.args else error).replace("\\n", "\n")
    hint = _closest_keys(argv) or text.splitlines()[-1].strip("'\\\" ")
    print(f"error: a config override names a key the config does not have "
          f"({', '.join(keys)}): {hint}", file=sys.stderr)
    return 2
  if flag_values.config is None or flag_values.workdir is None:
    print("error: train needs --config FILE and --workdir DIR", file=sys.stderr)
    return 2
  from glofnd_jax.training import loop
  loop.train_and_evaluate(flag_values.config, flag_values.workdir,
                           evaluate=flag_values.evaluate)
  return 0


def _eval(argv) -> int:
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "the run's directory", flag_values=flag_values)
  flag_values(["glofnd-jax eval", *argv])
  if flag_values.workdir is None:
    print("error: eval needs --workdir DIR", file=sys.stderr)
    return 2
  from glofnd_jax.training import loop
  loop.evaluate_workdir(flag_values.workdir)
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
  if command == "validate-shards":
    from glofnd_jax.data.pairs import shard_tools
    return shard_tools.validate_main(rest)
  if command == "rekey-shards":
    from glofnd_jax.data.pairs import shard_tools
    return shard_tools.rekey_main(rest)
  if command == "train-tokenizer":
    from glofnd_jax.data import tokenizer
    return tokenizer.main(rest)
  if command == "demo":
    from glofnd_jax import demo
    demo.main(rest)
    return 0
  print(_usage())
  print(f"\nerror: unknown command {command!r}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
