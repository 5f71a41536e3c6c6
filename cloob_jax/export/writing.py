"""Writing an export: its paths, the refusal of an existing output, atomic writes (local files
and directories by rename; gs:// object by object, config files last), and `export`, which
checks, encodes through the format's writer and writes."""

from __future__ import annotations

import os
import shutil

from cloob_jax import paths
from cloob_jax.export import encode
from cloob_jax.export import registry


def side_json(output: str) -> str:
  """OUT.pt / OUT.npz -> OUT.json, the metadata beside a one-file output."""
  stem, _ = os.path.splitext(output)
  return stem + ".json"


def outputs(spec: registry.Format, output: str) -> list[str]:
  """The paths an export to `output` creates (a directory counts as one)."""
  return [output, side_json(output)] if spec.one_file else [output]


def check_output(spec: registry.Format, output: str, overwrite: bool) -> None:
  if not output:
    raise registry.ExportError("--output is required")
  paths.check(output, "--output")
  if not paths.is_remote(output):  # a file where a folder of the output would be made
    above = os.path.dirname(os.path.abspath(output))
    while not os.path.lexists(above):
      above = os.path.dirname(above)
    if not os.path.isdir(above):
      raise registry.ExportError(f"--output={output!r}: {above} is a file, not a folder")
  if spec.one_file and not output.endswith(spec.suffixes):
    raise registry.ExportError(
        f"--format={spec.name} writes one file: give --output a name ending in "
        f"{' or '.join(spec.suffixes)} (got {output!r})")
  if not overwrite:
    for p in outputs(spec, output):
      if paths.exists(p):
        raise registry.ExportError(f"{p} exists; pass --overwrite to replace it")


def _remove(p: str) -> None:
  if paths.is_remote(p):
    target = paths.path(p)
    if target.is_dir():
      target.rmtree()
    elif target.exists():
      target.unlink()
  elif os.path.isdir(p) and not os.path.islink(p):
    shutil.rmtree(p)
  elif os.path.lexists(p):
    os.remove(p)


def write_directory(output: str, files: dict[str, bytes], overwrite: bool) -> None:
  """Writes {name: bytes} as the directory `output`, all at once.

  Locally: into a temporary sibling, renamed to `output` when complete (a replaced output is
  moved aside first and deleted after). On an object store each file is one upload in the
  given order (`export`: the metadata, then the format's files, whose weights come before its
  config files), so a reader never finds a config whose weights are missing.
  """
  if paths.is_remote(output):
    if overwrite and paths.exists(output):
      _remove(output)
    for name, data in files.items():
      paths.write_bytes(paths.join(output, name), data)
    return
  output = os.path.abspath(output)
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(output)}.tmp{os.getpid()}")
  old = os.path.join(parent, f".{os.path.basename(output)}.old{os.getpid()}")
  _remove(tmp)
  try:
    os.makedirs(tmp)
    for name, data in files.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    if os.path.lexists(output):
      if not overwrite:
        raise registry.ExportError(f"{output} exists; pass --overwrite to replace it")
      os.replace(output, old)
    try:
      os.replace(tmp, output)
    except BaseException:
      if os.path.lexists(old):  # put the replaced output back
        os.replace(old, output)
      raise
  finally:
    _remove(tmp)
    _remove(old)


def write_files(files: dict[str, bytes], overwrite: bool) -> None:
  """Writes {path: bytes}, each atomically (temporary name, then rename), in the given order."""
  for p, data in files.items():
    if overwrite and paths.exists(p) and paths.path(p).is_dir():
      _remove(p)
    paths.write_bytes(p, data)


def export(variables, name: str, config, fmt: str, output: str, info: dict, *,
           overwrite: bool = False) -> list[str]:
  """Writes `variables` (linen, numpy) of the model `config` in `fmt` to `output`, with the
  metadata `info` beside a file output or in `registry.INFO_FILE` inside a directory.

  Returns the paths written. Raises ExportError for a format that cannot hold the model or an
  existing output without `overwrite`; nothing is written then.
  """
  spec = registry.check_fits(name, config, fmt)
  check_output(spec, output, overwrite)
  data = spec.write(variables, config, info)
  if spec.one_file:
    write_files({output: data, side_json(output): encode.json_bytes(info)}, overwrite)
  else:
    write_directory(output, {registry.INFO_FILE: encode.json_bytes(info), **data}, overwrite)
  return outputs(spec, output)
