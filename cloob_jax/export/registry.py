"""The registry of export formats, and the check of what fits where.

A format is one module in `cloob_jax/export/formats/` (plus its import line in that package's
`__init__.py`) that registers a writer:

    @registry.register("npy_dir", clip_towers=False,
                       load_hint=lambda name, config, output: f"numpy.load(...)")
    def write(variables, config, info) -> dict[str, bytes]:
      ...  # {file name: bytes} of a directory output, in upload order

- `suffixes=(".ext", ...)` makes it a one-file format: `write` returns the file's bytes, and
  the metadata goes beside it as OUT.json. Without suffixes the output is a directory: `write`
  returns its files, and the metadata goes in `INFO_FILE` inside it.
- `clip_towers=True` (the default, for the torch layouts) refuses a model whose towers open_clip
  has no counterpart for; `check(name, config)` raises ExportError for what else it cannot hold.
- `load_hint(name, config, output)` says how to load the result, for the binary's last line.

The binary, `export.export`, the atomic writers and the metadata find the format here; nothing
else needs an edit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from cloob_jax import errors

INFO_FILE = "cloob_jax_export.json"  # the metadata, in a directory output

Writer = Callable[[Any, Any, dict], "bytes | dict[str, bytes]"]


class ExportError(errors.UserError):
  """Input the export refuses; the message says why (and what would work)."""


@dataclasses.dataclass(frozen=True)
class Format:
  """One registered format: see the module docstring."""
  name: str
  write: Writer
  load_hint: Callable[[str, Any, str], str]
  suffixes: tuple[str, ...] = ()
  clip_towers: bool = True
  check: Callable[[str, Any], None] | None = None

  @property
  def one_file(self) -> bool:
    return bool(self.suffixes)


_FORMATS: dict[str, Format] = {}  # in registration order


def register(name: str, *, load_hint: Callable[[str, Any, str], str],
             suffixes: tuple[str, ...] = (), clip_towers: bool = True,
             check: Callable[[str, Any], None] | None = None):
  """Decorator: registers `write(variables, config, info)` as `--format=name`."""

  def decorate(write: Writer) -> Writer:
    if name in _FORMATS:
      raise ValueError(f"an export format {name!r} is already registered")
    _FORMATS[name] = Format(name, write, load_hint, tuple(suffixes), clip_towers, check)
    return write

  return decorate


def names() -> tuple[str, ...]:
  return tuple(_FORMATS)


def get(fmt: str) -> Format:
  if fmt not in _FORMATS:
    raise ExportError(f"unknown --format={fmt!r}; known: {', '.join(_FORMATS)}")
  return _FORMATS[fmt]


def check_fits(name: str, config, fmt: str) -> Format:
  """The format `fmt`; raises ExportError when it cannot hold the model `config` (registry
  name `name`)."""
  spec = get(fmt)
  if spec.clip_towers and (config.vision.open_clip_cfg() is None or
                           config.text.open_clip_cfg() is None):
    others = [f.name for f in _FORMATS.values() if not f.clip_towers]
    raise ExportError(f"--format={fmt}: {name} ({config.vision.kind} image tower) is not a "
                      f"CLIP tower; it exports to --format={' or '.join(others)} only")
  if spec.check is not None:
    spec.check(name, config)
  return spec
