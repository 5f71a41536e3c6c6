"""The export formats, one module each (`cloob_jax/export/registry.py` says what one
declares). To add one: a module here and its import below."""

# The registered formats (import order = the order of `--format`'s list).
from cloob_jax.export.formats import open_clip  # noqa: F401
from cloob_jax.export.formats import hf  # noqa: F401
from cloob_jax.export.formats import openai  # noqa: F401
from cloob_jax.export.formats import params  # noqa: F401
