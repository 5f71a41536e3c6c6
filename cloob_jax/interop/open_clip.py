"""open_clip / OpenAI-layout weights -> this project's linen variables.

    module, variables = load("RN50.safetensors", "RN50")
    emb = module.apply(variables, images_nhwc, method=module.encode_image)

Keys follow open_clip's `CLIP.state_dict()`: text tower at the top level (`token_embedding.weight`,
`transformer.resblocks.N...`), image tower under `visual.`. Every expected key must be present
with the right shape and every given key must be used; otherwise a ValueError names the first
offender. Torch's layouts are converted: Linear [out, in] -> Dense [in, out], Conv
[out, in, kh, kw] -> [kh, kw, in, out].
"""

import io
import re
from typing import Any, Mapping

import flax
import jax
import numpy as np

from cloob_jax import models
from cloob_jax import paths

# Buffers torch keeps that carry no learned state here.
_IGNORED = re.compile(r"(^|\.)(num_batches_tracked|attn_mask)$"
                      r"|^(input_resolution|context_length|vocab_size)$")  # OpenAI's .pt extras


def _torch_key(path: tuple[str, ...], collection: str) -> str:
  """('params', 'text', 'transformer', 'resblocks_0', 'attn', 'in_proj', 'kernel') -> torch key."""
  parts = list(path)
  if parts[0] == "text":  # open_clip's CLIP keeps the text tower's modules at the top level
    parts = parts[1:]
  leaf = parts.pop()
  parts = [re.sub(r"^(resblocks|layer\d)_(\d+)$", r"\1.\2", p) for p in parts]
  parts = [{"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p)
           for p in parts]
  if parts[-2:] == ["attn", "in_proj"]:  # torch's MultiheadAttention fuses q, k, v
    return ".".join(parts[:-1] + ["in_proj_" + {"kernel": "weight", "bias": "bias"}[leaf]])
  if collection == "batch_stats":
    leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
  else:
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
  return ".".join(parts + [leaf])


def _to_flax(array: np.ndarray, leaf: str, target_ndim: int) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  return array


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


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
  abstract = flax.core.unfreeze(abstract)
  used = set()
  flat = {}
  for collection in sorted(abstract, key=lambda c: c != "params"):  # params first
    for path, target in flax.traverse_util.flatten_dict(abstract[collection]).items():
      key = _torch_key(path, collection)
      if key not in state_dict:
        raise ValueError(f"state_dict for {model_name!r} is missing key {key!r} "
                         f"(needed for {collection}/{'/'.join(path)}, shape {target.shape})")
      value = _to_flax(_as_numpy(state_dict[key]), path[-1], len(target.shape))
      if key == "logit_scale":
        value = value.reshape(target.shape)  # some checkpoints store it as [1]
      if value.shape != target.shape:
        raise ValueError(f"state_dict key {key!r} has shape {_as_numpy(state_dict[key]).shape}, "
                         f"which does not fit {model_name!r} ({collection}/{'/'.join(path)} "
                         f"needs {target.shape} in this project's layout)")
      used.add(key)
      flat[(collection,) + path] = value.astype(target.dtype)
  for key in state_dict:
    if key not in used and not _IGNORED.search(key):
      raise ValueError(f"state_dict has unexpected key {key!r} for model {model_name!r}")
  return flax.traverse_util.unflatten_dict(flat)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads `.safetensors` (no torch needed) or a torch `.pt`/`.bin`/`.pth` (weights only),
  from a local path or a gs:// URL (read whole into memory)."""
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
    state = torch.load(source, map_location="cpu", weights_only=True)
  except RuntimeError:
    # OpenAI's released .pt files are TorchScript archives, not pickled state dicts.
    if isinstance(source, io.BytesIO):
      source.seek(0)
    state = torch.jit.load(source, map_location="cpu").state_dict()
  return {k: _as_numpy(v) for k, v in _unwrap(state).items() if hasattr(v, "shape")}


def load(path: str, model_name: str, **overrides):
  """Reads an open_clip / OpenAI checkpoint -> (module, variables)."""
  variables = convert_state_dict(read_state_dict(path), model_name, **overrides)
  return models.create_model(model_name, **overrides), variables
