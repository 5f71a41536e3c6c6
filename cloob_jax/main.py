"""`python -m cloob_jax.main --config=configs/NAME.py[:ARGS] --workdir=DIR [--config.KEY=VALUE]`.

Flags only: multi-host initialisation (`distributed.initialize`, shared with the eval binary),
then `train.train_and_evaluate`. Re-running the same command resumes from the latest
checkpoint in DIR. A user error (a bad config key or value, an unknown model, a missing path,
a damaged checkpoint, a full disk) is one line `error: ...` and exit status 2; `--traceback`
shows the trace.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from cloob_jax import cli
from cloob_jax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process run started by hand (launch/local_multiprocess.sh);"
    " TPU VMs and SLURM are detected without it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "Virtual CPU devices per process (tests and local multi-process).")
_PEER_TIMEOUT = flags.DEFINE_float(
    "peer_timeout_s", 60.0,
    "Multi-process runs: when another process gives no sign of life for this long (dead or "
    "hung), exit in one line naming the step to resume from.")
_STEP_TIMEOUT = flags.DEFINE_float(
    "step_timeout_s", 600.0,
    "Multi-process runs: exit the same way when no step finishes for this long with every "
    "process alive (a hung collective; evals, saves and the first step's compile excepted).")
_RESTART = flags.DEFINE_bool(
    "restart_from_scratch", False,
    "When every checkpoint in --workdir is damaged (they are moved aside to STEP.damaged), "
    "train from step 0 instead of refusing to start.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed():
  """jax.distributed for explicit coordinators, SLURM jobs and TPU pods; nothing for one host."""
  from cloob_jax import distributed
  distributed.initialize(coordinator_address=_COORDINATOR.value,
                         num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                         num_cpu_devices=_CPU_DEVICES.value,
                         peer_timeout_s=_PEER_TIMEOUT.value, step_timeout_s=_STEP_TIMEOUT.value)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  from cloob_jax import config_lib
  from cloob_jax import paths
  # Before any device or data work. A user error (here or later) is one line: cli.run.
  config_lib.validate(_CONFIG.value)
  paths.makedirs(_WORKDIR.value, "--workdir")  # a URL: its scheme's package, its bucket
  initialize_distributed()
  from cloob_jax import train
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                           restart_from_scratch=_RESTART.value)


if __name__ == "__main__":
  cli.run(main)
