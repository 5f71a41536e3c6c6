"""python -m cloob_jax.export: the package's docstring (`cloob_jax/export/__init__.py`) is the
usage that --help prints, followed by the flags of `binary.define_flags`."""

from cloob_jax import cli
from cloob_jax import export
from cloob_jax.export import binary

if __name__ == "__main__":
  __doc__ = export.__doc__  # absl's --help prints the main module's docstring
  binary.define_flags()
  # Bad input (ExportError, PathError, a ValueError from a model config, a missing optional
  # package) is one line `error: ...` and exit status 2.
  cli.run(binary.main, user_errors=(ValueError, FileNotFoundError, ImportError),
          key_modules=(binary,))
