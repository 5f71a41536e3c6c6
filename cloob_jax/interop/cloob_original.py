"""The original CLOOB checkpoints (ml-jku/cloob, PyTorch) -> the open_clip layout we import.

Their training script saves `{"epoch", "name", "state_dict", "optimizer", "scheduler"}`, and the
released files also name their architecture: `model_config_file` (`"RN50.json"`, one of their
`training/model_configs/`, named `MODEL.replace('/', '-')`), or, in other files, the old OpenAI
constructor arguments beside the state dict (`embed_dim, image_resolution, vision_layers,
vision_width, vision_patch_size, context_length, vocab_size, transformer_width,
transformer_heads, transformer_layers`). Their `CLIPGeneral` differs from open_clip's `CLIP` in:

- DDP's `module.` prefix on every key;
- the text tower nested under `transformer.`: `transformer.token_embedding.weight`,
  `transformer.positional_embedding`, `transformer.transformer.resblocks.N...`,
  `transformer.ln_final.*`, `transformer.text_projection`;
- `logit_inv_tau` = log(1/tau) in place of `logit_scale` (the same convention as ours: it
  becomes `params['logit_scale']` unchanged); `logit_scale_hopfield`, a leftover of
  `--learnable-scale-hopfield` that their own loader pops, carries nothing the model uses and is
  dropped;
- QuickGELU everywhere (OpenAI's code), so the model is built with `quick_gelu=True`.

The image tower (`visual.*`, ModifiedResNet or ViT) has open_clip's keys already.
`interop.open_clip.read_checkpoint` calls `is_original` on every file it reads and, for these,
`normalise` and `resolve_model`.
"""

import dataclasses
import os
from typing import Any, Mapping

from cloob_jax import models

LAYOUT = "original CLOOB (ml-jku/cloob)"

# Text-tower prefixes in their layout -> open_clip's. Keys under `transformer.` not listed here
# are left as they are, so that the import's "unexpected key" error names them as written.
_TEXT_PREFIXES = (
    ("transformer.transformer.", "transformer."),
    ("transformer.token_embedding.", "token_embedding."),
    ("transformer.ln_final.", "ln_final."),
)
_TEXT_KEYS = {"transformer.positional_embedding": "positional_embedding",
              "transformer.text_projection": "text_projection"}
_INV_TAU = "logit_inv_tau"
_DROPPED = ("logit_scale_hopfield",)
# OpenAI's constructor arguments, as their model configs spell them.
OPENAI_NAMES = ("embed_dim", "image_resolution", "vision_layers", "vision_width",
                "vision_patch_size", "context_length", "vocab_size", "transformer_width",
                "transformer_heads", "transformer_layers")
_PREFIX = "module."


def _strip(key: str) -> str:
  return key[len(_PREFIX):] if key.startswith(_PREFIX) else key


def is_original(state_dict: Mapping[str, Any]) -> bool:
  """Whether `state_dict` (a checkpoint's, `module.` prefixed or not) is in their layout."""
  for key in state_dict:
    key = _strip(key)
    if key == _INV_TAU or key.startswith(("transformer.transformer.",
                                          "transformer.token_embedding.")):
      return True
  return False


def normalise(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Their state dict -> open_clip's keys (no `module.`, text tower at the top level,
  `logit_scale` from `logit_inv_tau`, `logit_scale_hopfield` dropped). Values are kept."""
  out = {}
  for key, value in state_dict.items():
    key = _strip(key)
    if key in _DROPPED:
      continue
    if key == _INV_TAU:
      key = "logit_scale"
    elif key in _TEXT_KEYS:
      key = _TEXT_KEYS[key]
    else:
      for old, new in _TEXT_PREFIXES:
        if key.startswith(old):
          key = new + key[len(old):]
          break
    if key in out:
      raise ValueError(f"{LAYOUT} state dict: two keys map to {key!r}")
    out[key] = value
  return out


# --------------------------------------------------------------------------- the architecture


def _openai_record(config) -> dict[str, Any] | None:
  """A registry ModelConfig as OpenAI's constructor arguments, or None when those arguments
  cannot describe it (their code builds a ViT or a ModifiedResNet, with 64-wide image heads
  and MLP ratio 4)."""
  if config.vision.kind not in ("vit", "resnet") or config.text.kind != "transformer":
    return None
  v, t = config.vision.open_clip_cfg(), config.text
  if v["head_width"] != 64 or v.get("mlp_ratio", 4) != 4 or t.mlp_ratio != 4:
    return None
  return {"embed_dim": config.embed_dim, "image_resolution": v["image_size"],
          "vision_layers": v["layers"], "vision_width": v["width"],
          "vision_patch_size": v["patch_size"],
          "context_length": t.context_length, "vocab_size": t.vocab_size,
          "transformer_width": t.width, "transformer_heads": t.heads,
          "transformer_layers": t.layers}


def _plain(value):
  if hasattr(value, "tolist"):  # a tensor or numpy scalar/array
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def model_from_openai_config(entries: Mapping[str, Any]) -> str:
  """OpenAI-style constructor arguments -> the registry model they describe.

  Raises ValueError naming what is missing, or the arguments when no registry model has them.
  """
  given = {k: _plain(entries[k]) for k in OPENAI_NAMES if k in entries}
  missing = [k for k in OPENAI_NAMES if k not in given and k != "vision_patch_size"]
  if missing:
    raise ValueError(f"{LAYOUT} model config lacks {', '.join(missing)}")
  given.setdefault("vision_patch_size", None)
  if isinstance(given["vision_layers"], list):
    given["vision_patch_size"] = None  # a ModifiedResNet; their RN configs write null
  for name in models.list_models():
    if _openai_record(models.get_config(name)) == given:
      return name
  shown = ", ".join(f"{k}={given[k]}" for k in OPENAI_NAMES)
  nameable = [n for n in models.list_models() if _openai_record(models.get_config(n))]
  raise ValueError(f"{LAYOUT} model config ({shown}) matches no registry model; those it can "
                   f"name: {', '.join(nameable)}")


def _model_from_config_file(value: str) -> str:
  stem = os.path.basename(str(value))
  stem = stem[:-len(".json")] if stem.endswith(".json") else stem
  try:
    models.get_config(stem)
  except ValueError as e:
    raise ValueError(f"{LAYOUT} checkpoint names model_config_file={value!r}, which is no "
                     f"registry model: {' '.join(str(e).split())}") from None
  return stem


def architecture(checkpoint: Mapping[str, Any]) -> tuple[str, str] | None:
  """(registry model name, where it came from) that a checkpoint dict carries, or None.

  From `model_config_file` (a file name, or the config dict itself) and/or OpenAI-style
  entries beside the state dict (top level, or a `model_info` dict); both, when present, must
  name the same model.
  """
  found = []
  config_file = checkpoint.get("model_config_file")
  if isinstance(config_file, Mapping):
    found.append((model_from_openai_config(config_file), "model_config_file"))
  elif config_file:
    found.append((_model_from_config_file(config_file),
                  f"model_config_file {os.path.basename(str(config_file))!r}"))
  for where, entries in (("its OpenAI-style config entries", checkpoint),
                         ("model_info", checkpoint.get("model_info"))):
    if isinstance(entries, Mapping) and any(k in entries for k in OPENAI_NAMES):
      found.append((model_from_openai_config(entries), where))
  if not found:
    return None
  (name, where), *others = found
  for other, other_where in others:
    if not _same_architecture(name, other):
      raise ValueError(f"{LAYOUT} checkpoint contradicts itself: {where} says {name}, "
                       f"{other_where} says {other}")
  return name, where


def _same_architecture(a: str, b: str) -> bool:
  """Same registry tower, whatever the activation ('RN50' and 'RN50-quickgelu' agree)."""
  def base(name):
    return dataclasses.replace(models.get_config(name), quick_gelu=False)
  return base(a) == base(b)


def _base_name(name: str) -> str:
  suffix = "-quickgelu"
  return name[:-len(suffix)] if name.endswith(suffix) else name


def resolve_model(checkpoint: Mapping[str, Any], model_name: str | None, path: str,
                  what: str = "--model=NAME", overrides: Mapping[str, Any] | None = None
                  ) -> tuple[str, dict[str, Any]]:
  """(model name, overrides) to build for an original CLOOB checkpoint dict read from `path`.

  The architecture is the one the file carries; `model_name`, when given, must name the same
  tower (else a one-line ValueError naming both). A file that carries none needs
  `model_name` (`what` says how the caller's user gives it). QuickGELU is switched on, as
  their model was trained with it, unless `overrides` say otherwise.
  """
  carried = architecture(checkpoint)
  if carried is None:
    if not model_name:
      raise ValueError(f"{path} is an {LAYOUT} checkpoint that does not name its architecture "
                       f"(no model_config_file or OpenAI-style config); give it with {what} "
                       f"(one of {', '.join(models.list_models())})")
    name = _base_name(model_name)
    models.get_config(name)  # an unknown name: the registry's error
  else:
    name, where = carried
    if model_name:
      models.get_config(model_name)
      if not _same_architecture(name, model_name):
        raise ValueError(f"{path} is an {LAYOUT} {name} checkpoint ({where}), but the "
                         f"architecture asked for is {model_name}")
      name = _base_name(model_name)
  overrides = dict(overrides or {})
  overrides.setdefault("quick_gelu", True)
  return name, overrides
