"""python -m cloob_jax.export: see `cloob_jax/export/__init__.py`."""

from cloob_jax import cli
from cloob_jax.export import binary

if __name__ == "__main__":
  binary.define_flags()
  # Bad input (ExportError, PathError, a ValueError from a model config, a missing optional
  # package) is one line `error: ...` and exit status 2.
  cli.run(binary.main, user_errors=(ValueError, FileNotFoundError, ImportError))
