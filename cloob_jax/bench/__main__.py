"""Dispatches `python -m cloob_jax.bench SUBCOMMAND [flags]` to cloob_jax.bench.SUBCOMMAND.run.

`python -m cloob_jax.bench --help` lists the subcommands (exit 0); `... SUBCOMMAND --help`
gives that benchmark's own flags. No subcommand, or an unknown one: the usage, exit 2.
"""

import importlib
import sys

# name: what it measures (one line of --help)
SUBCOMMANDS = {
    "compile": "compile the train step for a TPU slice that is not attached: HBM per chip, "
               "FLOPs, collectives",
    "data": "input pipeline images/s on generated JPEG shards",
    "levers": "the CPU train step under each XLA flag set or model switch, side by side",
    "tokenizer": "captions/s, ours and open_clip's",
    "train": "the compiled train step: step time, images/s, FLOP/s, memory "
             "(--torch: open_clip's beside it; --accum_steps: accumulation's cost)",
}
USAGE = f"usage: python -m cloob_jax.bench {{{','.join(SUBCOMMANDS)}}} [flags]"


def main():
  args = sys.argv[1:]
  if args and args[0] in ("-h", "--help"):
    width = max(map(len, SUBCOMMANDS))
    print(USAGE + "\n\nsubcommands (each takes --help):\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()))
    return
  if not args or args[0] not in SUBCOMMANDS:
    got = f": unknown subcommand {args[0]!r}" if args else ""
    print(USAGE + got, file=sys.stderr)
    sys.exit(2)
  name = sys.argv.pop(1)
  module = importlib.import_module(f"cloob_jax.bench.{name}")
  sys.argv[0] = f"cloob_jax.bench {name}"
  module.run()


if __name__ == "__main__":
  main()
