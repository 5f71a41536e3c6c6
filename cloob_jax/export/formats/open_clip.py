"""`--format=open_clip`: a directory with `open_clip_config.json` ({"model_cfg": ...,
"preprocess_cfg": ...}) and `open_clip_model.safetensors` (flat open_clip keys).

Loads with `open_clip.create_model_and_transforms('local-dir:OUT')`, and for a registry model
with open_clip's own config also `open_clip.create_model('ViT-B-32[-quickgelu]',
pretrained='OUT/open_clip_model.safetensors')`. Every CLIP tower (ViT, ModifiedResNet).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cloob_jax import paths
from cloob_jax.export import encode
from cloob_jax.export import registry

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
# open_clip's built-in configs that equal a registry entry (open_clip.create_model(NAME, ...)).
_BUILTINS = ("RN50", "RN101", "RN50x4", "ViT-B/32", "ViT-B/16", "ViT-L/14")


def model_cfg(config) -> dict[str, Any]:
  """open_clip's model config (its `model_configs/*.json` schema) for a CLIP ModelConfig: each
  tower's own `open_clip_cfg()`."""
  return {"embed_dim": config.embed_dim, "vision_cfg": config.vision.open_clip_cfg(),
          "text_cfg": config.text.open_clip_cfg(), "quick_gelu": bool(config.quick_gelu)}


def _builtin_cfg(name: str, quick_gelu: bool) -> dict:
  from cloob_jax import models  # pylint: disable=g-import-not-at-top
  return model_cfg(dataclasses.replace(models.get_config(name), quick_gelu=quick_gelu))


def load_hint(name: str, config, output: str) -> str:
  hint = f"open_clip.create_model_and_transforms('local-dir:{output}')"
  if name in _BUILTINS and model_cfg(config) == _builtin_cfg(name, config.quick_gelu):
    builtin = name.replace("/", "-") + ("-quickgelu" if config.quick_gelu else "")
    hint += (f" or open_clip.create_model({builtin!r}, "
             f"pretrained={paths.join(output, WEIGHTS)!r})")
  return hint


@registry.register("open_clip", load_hint=load_hint)
def write(variables, config, info) -> dict[str, bytes]:
  from cloob_jax.interop import keymap  # pylint: disable=g-import-not-at-top
  return {WEIGHTS: encode.safetensors_bytes(keymap.to_state_dict(variables, config), info),
          CONFIG: encode.json_bytes({"model_cfg": model_cfg(config),
                                     "preprocess_cfg": encode.preprocess_cfg(config)})}
