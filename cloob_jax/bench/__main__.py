"""Dispatches `python -m cloob_jax.bench SUBCOMMAND [flags]` to cloob_jax.bench.SUBCOMMAND.main."""

import importlib
import sys

SUBCOMMANDS = ("compile", "data", "levers", "tokenizer", "train")


def main():
  if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
    sys.exit(f"usage: python -m cloob_jax.bench {{{','.join(SUBCOMMANDS)}}} [flags]")
  name = sys.argv.pop(1)
  module = importlib.import_module(f"cloob_jax.bench.{name}")
  sys.argv[0] = f"cloob_jax.bench {name}"
  module.run()


if __name__ == "__main__":
  main()
