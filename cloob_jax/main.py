"""Trains a model from a config file.

  python -m cloob_jax.main --config=configs/NAME.py[:ARGS] --workdir=DIR [--config.KEY=VALUE]
  python -m cloob_jax.main --config=configs/NAME.py[:ARGS] [--config.KEY=VALUE] --print_config

Flags only: multi-host initialisation (`distributed.initialize`, shared with the eval binary),
then `train.train_and_evaluate`. Re-running the same command resumes from the latest
checkpoint in DIR. `--print_config` prints the config as resolved from the file, its args and
the overrides (the JSON that DIR/config.json would hold) and exits, writing nothing. A user
error (a bad config key or value, an unknown model, a missing path, a damaged checkpoint, a
full disk) is one line `error: ...` and exit status 2; `--traceback` shows the trace.
"""

import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from cloob_jax import cli
from cloob_jax import distributed
from cloob_jax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
distributed.define_flags()  # --coordinator_address, --num_processes, ..., --peer_timeout_s
_RESTART = flags.DEFINE_bool(
    "restart_from_scratch", False,
    "When every checkpoint in --workdir is damaged (they are moved aside to STEP.damaged), "
    "train from step 0 instead of refusing to start.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False,
    "Print the resolved config (file, args and --config.KEY overrides) as JSON and exit; "
    "--workdir is not needed and nothing is written.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  if _PRINT_CONFIG.value:
    try:
      print(_CONFIG.value.to_json_best_effort(indent=2, sort_keys=True), flush=True)
    except BrokenPipeError:  # `--print_config | head`: the reader has what it wanted
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return
  if not _WORKDIR.value:
    raise errors.UserError("--workdir is required: the folder for the run's checkpoints and "
                           "metrics (--print_config shows the config without one)")
  if not flags.FLAGS["verbosity"].present:  # orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  from cloob_jax import config_lib
  from cloob_jax import paths
  # Before any device or data work. A user error (here or later) is one line: cli.run.
  config_lib.validate(_CONFIG.value)
  paths.makedirs(_WORKDIR.value, "--workdir")  # a URL: its scheme's package, its bucket
  distributed.initialize_from_flags()  # SLURM, TPU pods, --coordinator_address; else nothing
  from cloob_jax import train
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                           restart_from_scratch=_RESTART.value)


if __name__ == "__main__":
  cli.run(main, key_modules=(distributed,))
