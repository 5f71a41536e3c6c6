"""`python -m cloob_jax.finetune --config=configs/finetune/NAME.py[:ARGS] --workdir=DIR`.

Bad input (an unknown mode or task, a missing init workdir or step, ...) ends with one line
`error: ...` on stderr and exit status 2, before anything is written.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from cloob_jax import cli
from cloob_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, outputs.")
distributed.define_flags()  # --coordinator_address, --num_processes, ...


def main(argv):
  quiet = not flags.FLAGS["verbosity"].present
  if quiet:  # orbax warns about every read-only look at the init workdir
    logging.set_verbosity(logging.ERROR)
  from cloob_jax import paths  # pylint: disable=g-import-not-at-top
  # Bad input: before any device work, and nothing written.
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    raise ValueError("--config is required (configs/finetune/NAME.py[:ARGS])")
  if not _WORKDIR.value:
    raise ValueError("--workdir is required")
  from cloob_jax.finetune import init_model  # pylint: disable=g-import-not-at-top
  from cloob_jax.finetune import trainer  # pylint: disable=g-import-not-at-top
  trainer.check_config(_CONFIG.value)
  paths.check_not_a_file(_WORKDIR.value, "--workdir")
  # Before locate: reading a checkpoint's steps starts jax's backend, after which a TPU VM's
  # jax.distributed.initialize refuses to run.
  distributed.initialize_from_flags()
  init_model.locate(_CONFIG.value.init)  # a missing init workdir or step
  # Reading the weights and the data: a file of another architecture, a bad folder.
  from cloob_jax.finetune import data as data_lib  # pylint: disable=g-import-not-at-top
  init = init_model.load(_CONFIG.value.init)
  splits = data_lib.load_splits(_CONFIG.value.data, init.model_config.vision.image_size)
  if quiet:  # orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  trainer.finetune(_CONFIG.value, _WORKDIR.value, init=init, splits=splits)


if __name__ == "__main__":
  # Bad input (an unknown mode or task, a missing workdir, a file of another architecture, a
  # missing optional package) is one line `error: ...` and exit status 2, before any writes.
  cli.run(main, user_errors=(ValueError, KeyError, FileNotFoundError, ImportError),
          key_modules=(distributed,))
