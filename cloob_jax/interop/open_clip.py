"""open_clip / OpenAI-layout weights -> this project's linen variables.

    module, variables = load("RN50.safetensors", "RN50")
    emb = module.apply(variables, images_nhwc, method=module.encode_image)

Keys follow open_clip's `CLIP.state_dict()`: text tower at the top level (`token_embedding.weight`,
`transformer.resblocks.N...`), image tower under `visual.`. Every expected key must be present
with the right shape and every given key must be used; otherwise a ValueError names the first
offender. Torch's layouts are converted: Linear [out, in] -> Dense [in, out], Conv
[out, in, kh, kw] -> [kh, kw, in, out]. The key map and the layouts are declared once in
`keymap.py`; `cloob_jax.export` writes the same layout back through its inverse. Original
CLOOB checkpoints (ml-jku/cloob) are renamed to this layout on reading (`cloob_original.py`).
"""

import io
import pickle
import zipfile
from typing import Any, Mapping

import flax
import jax
import numpy as np

from cloob_jax import errors
from cloob_jax import models
from cloob_jax import paths
from cloob_jax.interop import cloob_original
from cloob_jax.interop import keymap

# The layout itself (keys, array orders, ignored buffers) lives in keymap.py, shared with the
# export (`cloob_jax.export`); these names stay for callers of the earlier private helpers.
_IGNORED = keymap.IGNORED
_torch_key = keymap.torch_key
_as_numpy = keymap.as_numpy


def _to_flax(array: np.ndarray, leaf: str, target_ndim: int | None = None) -> np.ndarray:
  del target_ndim  # the torch array's own rank decides, as before
  return keymap.to_flax(array, leaf)


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Accepts training checkpoints too: {'state_dict': ...} and DDP's 'module.' prefix."""
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]
  out = {}
  for key, value in state_dict.items():
    out[key[len("module."):] if key.startswith("module.") else key] = value
  return out


def convert_state_dict(state_dict: Mapping[str, Any], model_name: str, **overrides) -> dict:
  """open_clip `state_dict` (numpy arrays or torch tensors) -> {'params': ..., 'batch_stats': ...}.

  `model_name` and `overrides` select the architecture as in `models.create_model`.
  Raises ValueError naming the first missing, unexpected or mis-shaped key.
  """
  state_dict = _unwrap(state_dict)
  config = models.get_config(model_name, **overrides)
  module = models.build(config)
  size = config.vision.image_size
  abstract = jax.eval_shape(
      lambda: module.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32),
                          np.zeros((1, config.text.context_length), np.int32)))
  return keymap.from_state_dict(state_dict, flax.core.unfreeze(abstract), model_name)


def _read(path: str, allow_torchscript: bool = False) -> Mapping[str, Any]:
  """The file's top-level dict as stored: a safetensors state dict, or what `torch.load`
  (weights only) gives (a state dict, or a training checkpoint holding one).

  A pickle is only ever unpickled with `weights_only=True` (tensors and plain containers, no
  code). A TorchScript archive (OpenAI's released .pt files) carries code and is read only
  with `allow_torchscript`; otherwise it is refused, as is a pickle that needs more than
  weights."""
  if not paths.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path!r}")
  source = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path
  if path.endswith(".safetensors"):
    from safetensors import numpy as safetensors_numpy
    if paths.is_remote(path):
      return safetensors_numpy.load(source.getvalue())
    return safetensors_numpy.load_file(path)
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs torch; convert it to .safetensors or "
                      "`pip install torch`") from e
  try:
    return torch.load(source, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError) as e:
    if isinstance(source, io.BytesIO):
      source.seek(0)
    if not _is_torchscript(source):
      raise errors.UserError(
          f"{path}: refusing to unpickle it: torch.load(weights_only=True) allows tensors and "
          f"plain containers only, and this file needs more "
          f"({errors.one_line(e).split('. ')[0][:200]}). Save its state_dict, or convert it "
          "to .safetensors") from e
    if not allow_torchscript:
      raise errors.UserError(
          f"{path} is a TorchScript archive (as OpenAI's released .pt files are), which "
          "carries code that loading runs; pass --allow_torchscript (fine-tuning: "
          "config.init.allow_torchscript=True) only for a file you trust, or convert it to "
          ".safetensors") from e
    if isinstance(source, io.BytesIO):
      source.seek(0)
    return torch.jit.load(source, map_location="cpu").state_dict()


def _is_torchscript(source) -> bool:
  """A TorchScript archive: a zip holding code/ and constants.pkl beside the data."""
  try:
    with zipfile.ZipFile(source) as archive:
      names = archive.namelist()
  except (zipfile.BadZipFile, OSError):
    return False
  finally:
    if isinstance(source, io.BytesIO):
      source.seek(0)
  return any(n.endswith("constants.pkl") for n in names) and any(
      "/code/" in n for n in names)


def _state_dict(stored: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A stored dict -> its open_clip-layout state dict (numpy), the original CLOOB layout
  (`cloob_original`) renamed."""
  state = stored["state_dict"] if isinstance(stored.get("state_dict"), Mapping) else stored
  if cloob_original.is_original(state):
    state = cloob_original.normalise(state)
  return {k: _as_numpy(v) for k, v in _unwrap(state).items() if hasattr(v, "shape")}


def read_state_dict(path: str, allow_torchscript: bool = False) -> dict[str, np.ndarray]:
  """Reads `.safetensors` (no torch needed) or a torch `.pt`/`.bin`/`.pth` (weights only),
  from a local path or a gs:// URL (read whole into memory), as an open_clip-layout state
  dict; an original CLOOB checkpoint's keys are renamed to it (`cloob_original`)."""
  return _state_dict(_read(path, allow_torchscript))


def read_checkpoint(path: str, model_name: str | None = None, *, what: str = "--model=NAME",
                    allow_torchscript: bool = False,
                    **overrides) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
  """(model name, overrides, open_clip-layout state dict) of the checkpoint at `path`.

  An open_clip / OpenAI file carries no architecture: `model_name` names it. An original
  CLOOB checkpoint may carry its own (`cloob_original.resolve_model`): `model_name`, when
  given, must agree, and QuickGELU is switched on. `what` says how the caller's user names
  the model, for the error when none is known. Raises a one-line ValueError.
  """
  if not model_name and not paths.exists(path):
    raise ValueError(f"no checkpoint at {path!r} to read an architecture from; give it with "
                     f"{what} (one of {', '.join(models.list_models())})")
  stored = _read(path, allow_torchscript)
  state = stored["state_dict"] if isinstance(stored.get("state_dict"), Mapping) else stored
  if cloob_original.is_original(state):
    model_name, overrides = cloob_original.resolve_model(stored, model_name, path, what,
                                                         overrides)
  elif not model_name:
    raise ValueError(f"{path} does not name its architecture (an open_clip / OpenAI state "
                     f"dict); give it with {what} (one of {', '.join(models.list_models())})")
  return model_name, overrides, _state_dict(stored)


def load(path: str, model_name: str | None = None, **overrides):
  """Reads an open_clip / OpenAI / original CLOOB checkpoint -> (module, variables).

  `model_name` may be left out for an original CLOOB checkpoint that names its architecture.
  """
  model_name, overrides, state_dict = read_checkpoint(path, model_name, **overrides)
  variables = convert_state_dict(state_dict, model_name, **overrides)
  return models.create_model(model_name, **overrides), variables
