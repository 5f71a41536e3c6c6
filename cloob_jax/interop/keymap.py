"""The torch layout of this project's towers, declared once, for import and export alike.

open_clip's `CLIP.state_dict()` and OpenAI's released state dicts share one layout: the text
tower's modules at the top level (`token_embedding.weight`, `transformer.resblocks.N...`,
`ln_final`, `text_projection`), the image tower under `visual.`, `logit_scale` beside them.
A linen variable maps to its torch key and array layout by three declarations:

- each tower's `torch_names` (`models.towers.TorchNames`, declared by its config record next
  to its module): its module lists (`resblocks_0` -> `resblocks.0`), renamed modules
  (ModifiedResNet's `downsample_conv` -> `downsample.0`) and fused projections
  (`attn/in_proj` -> `attn.in_proj_weight`);
- `torch_key(path, collection, names)`: the key of one leaf by those names and torch's leaf
  names (`('text', 'transformer', 'resblocks_0', 'attn', 'in_proj', 'kernel')` in 'params' ->
  `'transformer.resblocks.0.attn.in_proj_weight'`);
- `_PERMUTATIONS`: the axis order of the leaves whose layouts differ (Conv [out, in, kh, kw] ->
  [kh, kw, in, out], Linear [out, in] -> Dense [in, out]); `to_flax` applies one, `to_torch`
  its inverse.

`from_state_dict` (the import, behind `open_clip.convert_state_dict`) walks the linen
variables a model expects and looks each up by its key; `to_state_dict` (the export) walks
the variables it is given and writes each under the same key, so a round trip is the identity
bit for bit. Both take the model's config for its towers' names; without one they use every
registered kind's names together (the built-in kinds' names do not collide). Other layouts
(Hugging Face's, `interop/hf.py`) are renamings of this one.
"""

import functools
import re
from typing import Any, Iterator, Mapping

import flax
import numpy as np

from cloob_jax.models import towers

_PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}

# (linen leaf name, ndim) -> the axes of the torch array in linen's order.
_PERMUTATIONS = {
    ("kernel", 4): (2, 3, 1, 0),  # Conv2d OIHW -> linen HWIO
    ("kernel", 2): (1, 0),        # Linear [out, in] -> Dense [in, out]; fused qkv included
}

# Buffers torch keeps that carry no learned state here; the import skips them, the export
# leaves them out (torch fills in num_batches_tracked; attn_mask is not persistent).
IGNORED = re.compile(r"(^|\.)(num_batches_tracked|attn_mask)$"
                     r"|^(input_resolution|context_length|vocab_size)$")  # OpenAI's .pt extras


# The top-level linen names of TwoTower's towers.
_TOWERS = {"visual": "vision", "text": "text"}


def tower_names(config=None) -> dict[str, towers.TorchNames]:
  """{'visual': ..., 'text': ...}: the torch names of the towers of `config` (a
  models.ModelConfig), or, without one, of every registered kind of each tower together."""
  if config is not None:
    return {"visual": config.vision.torch_names, "text": config.text.torch_names}
  out = {}
  for linen_name, tower in _TOWERS.items():
    names = towers.TorchNames()
    for kind in towers.kinds(tower):
      names = names.merged(towers.config_class(tower, kind).torch_names)
    out[linen_name] = names
  return out


@functools.lru_cache(maxsize=None)
def _lists(patterns: tuple[str, ...]) -> re.Pattern | None:
  return re.compile(rf"^({'|'.join(patterns)})_(\d+)$") if patterns else None


def torch_key(path: tuple[str, ...], collection: str,
              names: Mapping[str, towers.TorchNames] | None = None) -> str:
  """('text', 'transformer', 'resblocks_0', 'attn', 'in_proj', 'kernel'), 'params' -> torch key.

  `names`: `tower_names(config)` of the model (default: every registered kind's).
  """
  names = tower_names() if names is None else names
  parts = list(path)
  tower = names.get(parts[0], towers.TorchNames())
  if parts[0] == "text":  # open_clip's CLIP keeps the text tower's modules at the top level
    parts = parts[1:]
  leaf = parts.pop()
  lists = _lists(tuple(tower.lists))
  if lists is not None:
    parts = [lists.sub(r"\1.\2", p) for p in parts]
  parts = [tower.modules.get(p, p) for p in parts]
  if parts and parts[-1] in tower.fused:  # torch's MultiheadAttention fuses q, k, v
    return ".".join(parts[:-1] + [parts[-1] + "_" + {"kernel": "weight", "bias": "bias"}[leaf]])
  if collection == "batch_stats":
    leaf = _STAT_LEAVES[leaf]
  else:
    leaf = _PARAM_LEAVES.get(leaf, leaf)
  return ".".join(parts + [leaf])


def to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
  """A torch array -> the layout of the linen leaf named `leaf`."""
  axes = _PERMUTATIONS.get((leaf, array.ndim))
  return array if axes is None else array.transpose(axes)


def to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
  """The inverse of `to_flax`: a linen leaf -> torch's layout (C-contiguous)."""
  axes = _PERMUTATIONS.get((leaf, array.ndim))
  if axes is not None:
    array = array.transpose(np.argsort(axes))
  return np.asarray(array, order="C")  # (ascontiguousarray would make a scalar 1-d)


def leaves(variables: Mapping[str, Any]) -> Iterator[tuple[str, tuple[str, ...], Any]]:
  """(collection, path, leaf) of linen variables, 'params' first, each in flattening order."""
  variables = flax.core.unfreeze(variables)
  for collection in sorted(variables, key=lambda c: c != "params"):
    for path, leaf in flax.traverse_util.flatten_dict(variables[collection]).items():
      yield collection, path, leaf


def to_state_dict(variables: Mapping[str, Any], config=None) -> dict[str, np.ndarray]:
  """Linen variables {'params', 'batch_stats'} of the model `config` (a models.ModelConfig;
  None: see `tower_names`) -> a flat torch-layout state dict (numpy)."""
  names = tower_names(config)
  out = {}
  for collection, path, value in leaves(variables):
    key = torch_key(path, collection, names)
    if key in out:
      raise ValueError(f"two variables map to the torch key {key!r}")
    out[key] = to_torch(np.asarray(value), path[-1])
  return out


def as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def from_state_dict(state_dict: Mapping[str, Any], abstract: Mapping[str, Any],
                    model_name: str, config=None) -> dict:
  """A torch-layout state dict -> linen variables shaped like `abstract` (ShapeDtypeStructs)
  of the model `config` (a models.ModelConfig; None: see `tower_names`).

  Raises ValueError naming the first missing, unexpected or mis-shaped key.
  """
  names = tower_names(config)
  used = set()
  flat = {}
  for collection, path, target in leaves(abstract):
    key = torch_key(path, collection, names)
    if key not in state_dict:
      raise ValueError(f"state_dict for {model_name!r} is missing key {key!r} "
                       f"(needed for {collection}/{'/'.join(path)}, shape {target.shape})")
    value = to_flax(as_numpy(state_dict[key]), path[-1])
    if key == "logit_scale":
      value = value.reshape(target.shape)  # some checkpoints store it as [1]
    if value.shape != target.shape:
      raise ValueError(f"state_dict key {key!r} has shape {as_numpy(state_dict[key]).shape}, "
                       f"which does not fit {model_name!r} ({collection}/{'/'.join(path)} "
                       f"needs {target.shape} in this project's layout)")
    used.add(key)
    flat[(collection,) + path] = value.astype(target.dtype)
  for key in state_dict:
    if key not in used and not IGNORED.search(key):
      raise ValueError(f"state_dict has unexpected key {key!r} for model {model_name!r}")
  return flax.traverse_util.unflatten_dict(flat)
