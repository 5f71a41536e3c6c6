"""Multi-process start-up, shared by the trainer (`cloob_jax.main`) and the eval binary.

    distributed.initialize(coordinator_address="127.0.0.1:12355", num_processes=2, process_id=0,
                           num_cpu_devices=2)   # a run started by hand (local_multiprocess.sh)
    distributed.initialize()                    # SLURM or a TPU pod: detected; one host: nothing

Call it before anything touches a jax backend (`jax.devices()`, the first array): the CPU
device count and the collectives implementation are read when the backend starts.
"""

from __future__ import annotations

import importlib.util
import os


def detected() -> bool:
  """True inside a multi-task SLURM job or on a GKE TPU pod (jax reads their setup)."""
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or bool(
      os.environ.get("TPU_WORKER_HOSTNAMES"))


def on_tpu_vm() -> bool:
  """True where the TPU runtime (libtpu, from jax[tpu]) is installed: a Cloud TPU VM, whose
  workers learn their pod from the GCE metadata server, not from the environment."""
  return importlib.util.find_spec("libtpu") is not None


PEER_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 600.0


def define_flags(flag_values=None):
  """The multi-process flags every binary takes (main, eval, finetune), into `flag_values`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flag_values if flag_values is not None else flags.FLAGS
  flags.DEFINE_string(
      "coordinator_address", None,
      "host:port of process 0 for a multi-process run started by hand (every process runs "
      "the same command with its own --process_id; launch/local_multiprocess.sh); TPU VMs and "
      "SLURM are detected without it.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes in the run.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=fv)
  flags.DEFINE_integer("num_cpu_devices", None,
                       "Virtual CPU devices per process (tests and local multi-process).",
                       flag_values=fv)
  flags.DEFINE_float(
      "peer_timeout_s", PEER_TIMEOUT_S,
      "Multi-process runs: when another process gives no sign of life for this long (dead or "
      "hung), exit in one line naming the step to resume from.", flag_values=fv)
  flags.DEFINE_float(
      "step_timeout_s", STEP_TIMEOUT_S,
      "Multi-process runs: exit the same way when no step finishes for this long with every "
      "process alive (a hung collective; evals, saves and the first step's compile excepted).",
      flag_values=fv)


def initialize_from_flags(flag_values=None) -> bool:
  """`initialize` with the values of `define_flags`' flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flag_values if flag_values is not None else flags.FLAGS
  return initialize(coordinator_address=f.coordinator_address, num_processes=f.num_processes,
                    process_id=f.process_id, num_cpu_devices=f.num_cpu_devices,
                    peer_timeout_s=f.peer_timeout_s, step_timeout_s=f.step_timeout_s)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, num_cpu_devices: int | None = None, *,
               peer_timeout_s: float = PEER_TIMEOUT_S,
               step_timeout_s: float = STEP_TIMEOUT_S) -> bool:
  """jax.distributed for an explicit coordinator, a SLURM job or a TPU pod; else nothing.

  Args:
    coordinator_address: host:port of process 0, for a run started by hand; CPU collectives
      then go through gloo. Without it, SLURM (SLURM_NTASKS > 1) and TPU pods
      (TPU_WORKER_HOSTNAMES) are detected and jax reads their environment.
    num_processes, process_id: the run's process count and this process's index (with
      coordinator_address).
    num_cpu_devices: virtual CPU devices of this process (tests, local multi-process runs).
    peer_timeout_s: a process that gives no sign of life for this long is taken as dead and
      the others exit in one line (`peerwatch`); the coordination service's own heartbeat
      timeout is set 40 s beyond it, so that this line comes first.
    step_timeout_s: no step finished for this long with every process alive (a hung
      collective) ends the run the same way.

  Returns:
    Whether jax.distributed was initialised.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
  heartbeat = int(max(100, peer_timeout_s + 40))
  if coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat)
    _no_persistent_cache_for_cpu_collectives(jax)
  elif detected():
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)  # SLURM's / a TPU pod's env
  elif on_tpu_vm():
    try:  # jax asks the metadata server for the slice's workers (one worker: one process)
      jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
    except ValueError:  # no TPU cluster found (libtpu installed elsewhere): one process
      return False
  else:
    return False
  from cloob_jax import peerwatch  # pylint: disable=g-import-not-at-top
  peerwatch.start(peer_timeout_s, step_timeout_s)
  return True


def _no_persistent_cache_for_cpu_collectives(jax):
  """CPU processes joined by gloo compile without the persistent compilation cache.

  With jax 0.12.1, a CPU program with cross-process collectives that is loaded from the cache
  hangs in its first collective on every process (the same run with a cold cache, or on jax
  0.12.0.1, trains); `tests/dead_host_test.py` and `tests/train_test.py` resume such runs.
  Accelerator backends keep the cache.
  """
  if jax.default_backend() == "cpu" and jax.config.jax_enable_compilation_cache:
    jax.config.update("jax_enable_compilation_cache", False)
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.info("CPU processes joined by gloo: the persistent compilation cache is off (a "
                 "cached program with cross-process collectives hangs on jax 0.12.1).")
