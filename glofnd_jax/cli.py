"""Command-line entry point: ``glofnd-jax <command> ...``."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("glofnd_jax.demo", "functional example: SogCLR +/- GloFND on synthetic clusters"),
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    lines = [f"  {name:8} {help_}" for name, (_, help_) in COMMANDS.items()]
    print("usage: glofnd-jax <command> [options]\n\ncommands:\n" + "\n".join(lines))
    if argv and argv[0] not in ("-h", "--help"):
      print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
      return 2
    return 0
  module = __import__(COMMANDS[argv[0]][0], fromlist=["main"])
  module.main(argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main())
