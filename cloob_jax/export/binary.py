r"""The export binary: a trained model -> open_clip, Hugging Face, OpenAI or JAX params files.

  python -m cloob_jax.export --workdir=runs/demo --format=params --output=demo.npz
  python -m cloob_jax.export --workdir=DIR [--step=N] --format=open_clip --output=OUT_DIR
  python -m cloob_jax.export --checkpoint=RN50.safetensors --model=RN50 --format=openai \
      --output=rn50.pt [--overwrite]

The model comes from a training workdir (its latest checkpoint or --step; read as numpy on
any device topology, so a pod's run exports on a laptop) or from an open_clip / OpenAI state
dict read by `interop.open_clip.load` with the architecture --model. Formats:

- `open_clip`: a directory with `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg":
  ...}) and `open_clip_model.safetensors` (flat open_clip keys). Loads with
  `open_clip.create_model_and_transforms('local-dir:OUT')`, and for a registry model with
  open_clip's own config also `open_clip.create_model('ViT-B-32[-quickgelu]',
  pretrained='OUT/open_clip_model.safetensors')`. Every CLIP tower (ViT, ModifiedResNet).
- `hf`: a `transformers.CLIPModel` directory (config.json, model.safetensors,
  preprocessor_config.json, tokenizer files): ViT towers only, hidden_act as trained.
- `openai`: OUT.pt, a flat OpenAI-layout state dict of tensors saved with `torch.save`, as
  OpenAI's `clip.load(path)` (WiSE-FT, FLYP) and open_clip's
  `build_model_from_openai_state_dict` read it: they infer the architecture from the key
  shapes (64-wide heads, MLP ratio 4) and, in OpenAI's code, always use QuickGELU; both cast
  the Conv/Linear weights to float16 on load. Beside it OUT.json holds the metadata.
- `params`: OUT.npz, numpy arrays named by their '/'-joined linen paths ('params/visual/...',
  'batch_stats/...'), the way big_vision stores params; beside it OUT.json.

Every format records the model config, method, 1/tau, beta, step, source and the exporting
code's git commit (safetensors metadata under "cloob_jax", `cloob_jax_export.json` in a
directory, OUT.json beside a file). Outputs are written under a temporary name and renamed
(a gs:// output object by object, the config last). An existing output is refused unless
--overwrite; a tower that a format cannot hold is refused before anything is read or written.
Bad input ends with one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
from typing import Any

from cloob_jax import errors
from cloob_jax import paths

FORMATS = ("open_clip", "hf", "openai", "params")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
HF_WEIGHTS = "model.safetensors"
INFO_FILE = "cloob_jax_export.json"  # the metadata, in a directory output
_FILE_SUFFIXES = {"openai": (".pt", ".pth", ".bin"), "params": (".npz",)}
# open_clip's built-in configs that equal a registry entry (open_clip.create_model(NAME, ...)).
_OPEN_CLIP_BUILTINS = ("RN50", "RN101", "RN50x4", "ViT-B/32", "ViT-B/16", "ViT-L/14")


class ExportError(errors.UserError):
  """Input the export refuses; the message says why (and what would work)."""


# --------------------------------------------------------------------------- what fits where


def _towers_for(fmt: str) -> str:
  return {"open_clip": "CLIP towers (ViT, ModifiedResNet)", "hf": "ViT towers",
          "openai": "CLIP towers with 64-wide heads and MLP ratio 4", "params": "every tower"}[fmt]


def check_fits(name: str, config, fmt: str) -> None:
  """Raises ExportError when `fmt` cannot hold the model `config` (registry name `name`)."""
  if fmt not in FORMATS:
    raise ExportError(f"unknown --format={fmt!r}; known: {', '.join(FORMATS)}")
  kind = config.vision.kind
  if fmt == "params":
    return
  if config.vision.open_clip_cfg() is None or config.text.open_clip_cfg() is None:
    raise ExportError(f"--format={fmt}: {name} ({kind} image tower) is not a CLIP tower; it "
                      "exports to --format=params only")
  if fmt == "hf":
    if kind != "vit":
      raise ExportError(f"--format=hf: {name} has a ModifiedResNet image tower, which "
                        "Hugging Face's CLIPModel does not have (ViT only); it exports to "
                        "--format=open_clip, openai or params")
    if config.text.vocab_size != 49408:
      raise ExportError(f"--format=hf: {name} has a text vocabulary of "
                        f"{config.text.vocab_size}, not CLIP's 49408 BPE tokens that the "
                        "exported tokenizer holds; use --format=open_clip or params")
  if fmt == "openai":
    v, t = config.vision.open_clip_cfg(), config.text
    problems = []
    if v["head_width"] != 64:
      problems.append(f"image heads {v['head_width']} wide")
    if t.width != 64 * t.heads:
      problems.append(f"text heads {t.width / t.heads:g} wide")
    if v.get("mlp_ratio", 4) != 4:
      problems.append(f"image MLP ratio {v['mlp_ratio']:g}")
    if t.mlp_ratio != 4:
      problems.append(f"text MLP ratio {t.mlp_ratio:g}")
    step = v["patch_size"] or 32  # a ModifiedResNet (no patches) downsamples 32 times
    if v["image_size"] % step:
      problems.append(f"image size {v['image_size']} not a multiple of {step}")
    if problems:
      raise ExportError(f"--format=openai: its loaders infer the architecture from the key "
                        f"shapes (64-wide heads, MLP ratio 4, image size = grid x patch), and "
                        f"{name} has {', '.join(problems)}; use --format=open_clip or params")


# --------------------------------------------------------------------------- config records


def open_clip_model_cfg(config) -> dict[str, Any]:
  """open_clip's model config (its `model_configs/*.json` schema) for a CLIP ModelConfig: each
  tower's own `open_clip_cfg()`."""
  return {"embed_dim": config.embed_dim, "vision_cfg": config.vision.open_clip_cfg(),
          "text_cfg": config.text.open_clip_cfg(), "quick_gelu": bool(config.quick_gelu)}


def preprocess_cfg(config) -> dict[str, Any]:
  """The eval transform (`data.transforms`): bicubic short-side resize, centre crop, CLIP's
  mean/std."""
  from cloob_jax.data import transforms  # pylint: disable=g-import-not-at-top
  return {"size": config.vision.image_size, "mode": "RGB", "mean": list(transforms.CLIP_MEAN),
          "std": list(transforms.CLIP_STD), "interpolation": "bicubic",
          "resize_mode": "shortest"}


def git_commit() -> dict[str, Any]:
  """{'git_commit': HEAD, 'git_dirty': bool} of the checkout this package runs from, or Nones
  (an installed package, no git)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  unknown = {"git_commit": None, "git_dirty": None}
  if not os.path.exists(os.path.join(root, ".git")):
    return unknown
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=20, check=True).stdout.strip()
    status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=20, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return unknown
  return {"git_commit": head, "git_dirty": bool(status.strip())}


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def metadata(name: str, overrides: dict, config, variables, *, fmt: str, source: str,
             train_config=None, step: int | None = None) -> dict[str, Any]:
  """What every format records about the model it holds."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cloob_jax import losses  # pylint: disable=g-import-not-at-top
  log_inv_tau = float(np.asarray(variables["params"]["logit_scale"]))
  get = (lambda k: train_config.get(k)) if train_config is not None else (lambda k: None)
  return {
      "exported_by": "cloob_jax.export",
      "format": fmt,
      "model": name,
      "model_overrides": _jsonable(overrides),
      "model_config": _jsonable(config.as_dict()),
      "quick_gelu": bool(config.quick_gelu),
      "method": get("method"),
      "logit_scale": log_inv_tau,
      "inv_tau": float(np.asarray(losses.inv_tau_from_log(log_inv_tau))),
      "learn_inv_tau": get("learn_inv_tau"),
      "beta": get("beta"),
      "step": step,
      "source": source,
      **git_commit(),
  }


# --------------------------------------------------------------------------- sources


# --------------------------------------------------------------------------- writers


def _side_json(output: str) -> str:
  """OUT.pt / OUT.npz -> OUT.json, the metadata beside a single-file output."""
  stem, _ = os.path.splitext(output)
  return stem + ".json"


def outputs(fmt: str, output: str) -> list[str]:
  """The paths an export to `output` creates (a directory counts as one)."""
  return [output, _side_json(output)] if fmt in _FILE_SUFFIXES else [output]


def check_output(fmt: str, output: str, overwrite: bool) -> None:
  if not output:
    raise ExportError("--output is required")
  paths.check(output, "--output")
  suffixes = _FILE_SUFFIXES.get(fmt)
  if suffixes and not output.endswith(suffixes):
    raise ExportError(f"--format={fmt} writes one file: give --output a name ending in "
                      f"{' or '.join(suffixes)} (got {output!r})")
  if not overwrite:
    for p in outputs(fmt, output):
      if paths.exists(p):
        raise ExportError(f"{p} exists; pass --overwrite to replace it")


def _safetensors_bytes(tensors: dict, info: dict) -> bytes:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  tensors = {k: np.asarray(v, np.float32, order="C") for k, v in tensors.items()}
  # "format": "pt" is what transformers and open_clip expect of a torch state dict.
  return safetensors_numpy.save(tensors, metadata={"format": "pt",
                                                   "cloob_jax": json.dumps(info)})


def _json_bytes(obj) -> bytes:
  return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


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


def _write_directory(output: str, files: dict[str, bytes], overwrite: bool) -> None:
  """Writes {name: bytes} as the directory `output`, all at once.

  Locally: into a temporary sibling, renamed to `output` when complete (a replaced output is
  moved aside first and deleted after). On an object store each file is one upload, the
  weights first and the config files last, so a reader never finds a config whose weights
  are missing.
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
        raise ExportError(f"{output} exists; pass --overwrite to replace it")
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


def _write_files(files: dict[str, bytes], overwrite: bool) -> None:
  """Writes {path: bytes}, each atomically (temporary name, then rename), in the given order."""
  for p, data in files.items():
    if overwrite and paths.exists(p) and paths.path(p).is_dir():
      _remove(p)
    paths.write_bytes(p, data)


def export(variables, name: str, config, fmt: str, output: str, info: dict, *,
           overwrite: bool = False) -> list[str]:
  """Writes `variables` (linen, numpy) of the model `config` in `fmt` to `output`.

  Returns the paths written. Raises ExportError for a format that cannot hold the model or an
  existing output without `overwrite`.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cloob_jax.interop import keymap  # pylint: disable=g-import-not-at-top
  check_fits(name, config, fmt)
  check_output(fmt, output, overwrite)
  if fmt == "params":
    arrays = {"/".join((collection,) + path): np.asarray(value)
              for collection, path, value in keymap.leaves(variables)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_files({output: buffer.getvalue(), _side_json(output): _json_bytes(info)}, overwrite)
    return outputs(fmt, output)
  state_dict = keymap.to_state_dict(variables, config)
  if fmt == "openai":
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ExportError("--format=openai writes a torch file: pip install torch") from e
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.asarray(v, np.float32, order="C"))
                for k, v in state_dict.items()}, buffer)
    _write_files({output: buffer.getvalue(), _side_json(output): _json_bytes(info)}, overwrite)
    return outputs(fmt, output)
  if fmt == "open_clip":
    files = {OPEN_CLIP_WEIGHTS: _safetensors_bytes(state_dict, info),
             INFO_FILE: _json_bytes(info),
             OPEN_CLIP_CONFIG: _json_bytes({"model_cfg": open_clip_model_cfg(config),
                                            "preprocess_cfg": preprocess_cfg(config)})}
  else:  # hf
    from cloob_jax.interop import hf  # pylint: disable=g-import-not-at-top
    pre = preprocess_cfg(config)
    files = {HF_WEIGHTS: _safetensors_bytes(hf.to_hf_state_dict(state_dict), info)}
    files.update({k: v.encode("utf-8")
                  for k, v in hf.tokenizer_files(config.text.context_length).items()})
    files[hf.PREPROCESSOR_CONFIG] = _json_bytes(
        hf.preprocessor_config(pre["size"], pre["mean"], pre["std"]))
    files[INFO_FILE] = _json_bytes(info)
    logit_scale = float(np.asarray(variables["params"]["logit_scale"]))
    files["config.json"] = _json_bytes(hf.config(config, logit_scale))
  _write_directory(output, files, overwrite)
  return [output]


def load_hint(fmt: str, name: str, config, output: str) -> str:
  """How to load what was written, for the closing message."""
  if fmt == "open_clip":
    hint = f"open_clip.create_model_and_transforms('local-dir:{output}')"
    if name in _OPEN_CLIP_BUILTINS:
      builtin = name.replace("/", "-") + ("-quickgelu" if config.quick_gelu else "")
      if open_clip_model_cfg(config) == _builtin_cfg(name, config.quick_gelu):
        hint += (f" or open_clip.create_model({builtin!r}, "
                 f"pretrained={paths.join(output, OPEN_CLIP_WEIGHTS)!r})")
    return hint
  if fmt == "hf":
    return f"transformers.CLIPModel.from_pretrained({output!r}), CLIPTokenizer likewise"
  if fmt == "openai":
    act = "" if config.quick_gelu else (
        "; the model uses GELU, so build it with open_clip.model."
        "build_model_from_openai_state_dict(sd, quick_gelu=False): OpenAI's clip.load "
        "always builds QuickGELU")
    return (f"torch.load({output!r}) -> an OpenAI-layout state dict (clip.load accepts the "
            f"path){act}")
  return f"numpy.load({output!r}) -> '/'-joined linen paths; metadata in {_side_json(output)}"


def _builtin_cfg(name: str, quick_gelu: bool) -> dict:
  from cloob_jax import models  # pylint: disable=g-import-not-at-top
  return open_clip_model_cfg(dataclasses.replace(models.get_config(name), quick_gelu=quick_gelu))


# --------------------------------------------------------------------------- the binary


def run(*, fmt: str, output: str, workdir: str | None = None, step: int | None = None,
        checkpoint: str | None = None, model: str | None = None,
        overwrite: bool = False, allow_torchscript: bool = False) -> list[str]:
  """The binary's work: validate everything cheap first, then read, then write."""
  if fmt not in FORMATS:
    raise ExportError(f"unknown --format={fmt!r}; known: {', '.join(FORMATS)}")
  if bool(workdir) == bool(checkpoint):
    raise ExportError("give exactly one of --workdir and --checkpoint")
  if workdir and model:
    raise ExportError("--model goes with --checkpoint; a workdir names its own model")
  if checkpoint and step is not None:
    raise ExportError("--step goes with --workdir")
  check_output(fmt, output, overwrite)
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
    check_fits(name, models.get_config(name, **overrides), fmt)  # before anything is read
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
    check_fits(name, config, fmt)  # before anything is written
    variables = open_clip.convert_state_dict(state_dict, name, **overrides)
    source = paths.absolute(checkpoint)
  info = metadata(name, overrides, config, variables, fmt=fmt, source=source,
                  train_config=train_config, step=step)
  written = export(variables, name, config, fmt, output, info, overwrite=overwrite)
  print(f"Wrote {', '.join(written)} ({name}, {fmt}); load with "
        f"{load_hint(fmt, name, config, output)}", flush=True)
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
  flags.DEFINE_string("format", None, f"One of {', '.join(FORMATS)}.", flag_values=flag_values)
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
    raise ExportError(f"--format is required: one of {', '.join(FORMATS)}")
  run(fmt=f.format, output=f.output, workdir=f.workdir, step=f.step, checkpoint=f.checkpoint,
      model=f.model, overwrite=f.overwrite, allow_torchscript=f.allow_torchscript)


if __name__ == "__main__":
  from cloob_jax import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  # Bad input (ExportError, PathError, a ValueError from a model config, a missing optional
  # package) is one line `error: ...` and exit status 2.
  cli.run(main, user_errors=(ValueError, FileNotFoundError, ImportError))
