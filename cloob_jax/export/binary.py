"""The export binary (`python -m cloob_jax.export`, flags in `define_flags`); the formats and
their metadata are described in the package's docstring (`cloob_jax/export/__init__.py`).

Everything cheap is validated first (the flags, the output, whether the format can hold the
model), then the model is read, then written. Bad input ends with one line `error: ...` on
stderr and exit status 2.
"""

from __future__ import annotations

from cloob_jax import paths
from cloob_jax.export import formats  # noqa: F401  the registered formats
from cloob_jax.export import record
from cloob_jax.export import registry
from cloob_jax.export import writing

ExportError = registry.ExportError


def run(*, fmt: str, output: str, workdir: str | None = None, step: int | None = None,
        checkpoint: str | None = None, model: str | None = None,
        overwrite: bool = False, allow_torchscript: bool = False) -> list[str]:
  """The binary's work: validate everything cheap first, then read, then write."""
  spec = registry.get(fmt)
  if bool(workdir) == bool(checkpoint):
    raise ExportError("give exactly one of --workdir and --checkpoint")
  if workdir and model:
    raise ExportError("--model goes with --checkpoint; a workdir names its own model")
  if checkpoint and step is not None:
    raise ExportError("--step goes with --workdir")
  writing.check_output(spec, output, overwrite)
  from cloob_jax import models  # pylint: disable=g-import-not-at-top
  train_config = None
  if workdir:
    from cloob_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
    train_config = checkpoint_lib.load_config(workdir)
    name = train_config.model.name
    overrides = train_config.model.get("overrides")
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides or {})
  else:
    name, overrides = model, {}
  if name:
    # before anything is read
    registry.check_fits(name, models.get_config(name, **overrides), fmt)
  if workdir:
    config = models.get_config(name, **overrides)
    # The newest intact step (a damaged latest one is skipped), or `step`, refused if damaged.
    train_config, step, variables = checkpoint_lib.read_variables(workdir, step)
    source = paths.absolute(workdir)
  else:
    # An open_clip / OpenAI file needs --model; an original CLOOB checkpoint may name its own
    # architecture (--model, when given, must agree) and is built with QuickGELU.
    from cloob_jax.interop import open_clip  # pylint: disable=g-import-not-at-top
    name, overrides, state_dict = open_clip.read_checkpoint(
        checkpoint, model, allow_torchscript=allow_torchscript)
    config = models.get_config(name, **overrides)
    registry.check_fits(name, config, fmt)  # before anything is written
    variables = open_clip.convert_state_dict(state_dict, name, **overrides)
    source = paths.absolute(checkpoint)
  info = record.metadata(name, overrides, config, variables, fmt=fmt, source=source,
                  train_config=train_config, step=step)
  written = writing.export(variables, name, config, fmt, output, info, overwrite=overwrite)
  print(f"Wrote {', '.join(written)} ({name}, {fmt}); load with "
        f"{spec.load_hint(name, config, output)}", flush=True)
  return written


def define_flags(flag_values=None):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flag_values if flag_values is not None else flags.FLAGS
  flags.DEFINE_string("workdir", None, "Training workdir to export.", flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).",
                       flag_values=flag_values)
  flags.DEFINE_string("checkpoint", None, "open_clip / OpenAI state dict (.safetensors, .pt).",
                      flag_values=flag_values)
  flags.DEFINE_string("model", None, "Architecture of --checkpoint (cloob_jax.models name).",
                      flag_values=flag_values)
  # A string, not an enum: an unknown format gets the binary's one-line error.
  flags.DEFINE_string("format", None, f"One of {', '.join(registry.names())}.", flag_values=flag_values)
  flags.DEFINE_string("output", None, "Directory (open_clip, hf) or file (openai: .pt, "
                      "params: .npz) to write.", flag_values=flag_values)
  flags.DEFINE_bool("overwrite", False, "Replace an existing output.", flag_values=flag_values)
  flags.DEFINE_bool("allow_torchscript", False,
                    "Read a TorchScript --checkpoint (OpenAI's released .pt files). Such an "
                    "archive carries code: only for files you trust.", flag_values=flag_values)
  return flag_values


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f["verbosity"].present:  # orbax logs its reads at INFO/WARNING
    logging.set_verbosity(logging.ERROR)
  if len(argv) > 1:
    raise ExportError(f"unexpected arguments: {' '.join(argv[1:])}")
  if f.format is None:
    raise ExportError(f"--format is required: one of {', '.join(registry.names())}")
  run(fmt=f.format, output=f.output, workdir=f.workdir, step=f.step, checkpoint=f.checkpoint,
      model=f.model, overwrite=f.overwrite, allow_torchscript=f.allow_torchscript)

