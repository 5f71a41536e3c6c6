"""Model configurations (open_clip's, plus tiny ones for CPU) and `create_model`.

Configs are small frozen records like open_clip's JSON files: a `ModelConfig` holds one config
record per tower, of its registered kind (`towers.py`; `ViTConfig`, `ModifiedResNetConfig`,
`ConvNetConfig`, `TextConfig`). `create_model(name, **overrides)` applies overrides to the top
level (`embed_dim=`, `quick_gelu=`, `dtype=`, `attention=`) or to a tower with a dict
(`vision=dict(remat=True)`, `text=dict(layers=2)`); unknown keys are refused by name.
`vision=dict(kind=KIND, ...)` swaps in a tower of another registered kind, from its defaults.
"""

import dataclasses
import difflib

import jax.numpy as jnp

from cloob_jax import errors
from cloob_jax.models import towers
from cloob_jax.models.layers import ATTENTION, effective_remat
from cloob_jax.models.two_tower import TwoTower
# The tower kinds register themselves on import, in this order (the order `known:` lists).
from cloob_jax.models.vit import ViTConfig  # pylint: disable=g-bad-import-order
from cloob_jax.models.resnet import ModifiedResNetConfig  # pylint: disable=g-bad-import-order
from cloob_jax.models.convnet import ConvNetConfig  # pylint: disable=g-bad-import-order
from cloob_jax.models.text import TextConfig  # pylint: disable=g-bad-import-order


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A two-tower model: each tower's config record (`towers.TowerConfig`, one per kind) and
  what both towers share."""
  embed_dim: int
  vision: towers.TowerConfig
  text: towers.TowerConfig
  quick_gelu: bool = False
  dtype: str = "float32"  # compute dtype of activations; parameters stay float32
  # The transformers' attention (models.layers.attention): 'einsum' (float32 logits, equal to
  # open_clip), or jax.nn.dot_product_attention's 'xla' or 'cudnn' (bfloat16/float16 only).
  attention: str = "einsum"

  @property
  def vision_kind(self) -> str:
    """The image tower's registered kind: 'vit', 'resnet' (CLIP's ModifiedResNet), ..."""
    return self.vision.kind

  def as_dict(self) -> dict:
    """The config as plain data, each tower with its kind (export metadata)."""
    out = dataclasses.asdict(self)
    out["vision"] = {"kind": self.vision.kind, **out["vision"]}
    out["text"] = {"kind": self.text.kind, **out["text"]}
    return out


def _text(width=512, heads=8, layers=12):
  return TextConfig(width=width, heads=heads, layers=layers)


def _resnet(image_size, layers, width, head_width=64):
  return ModifiedResNetConfig(image_size, layers, width, head_width)


_CONFIGS: dict[str, ModelConfig] = {
    "RN50": ModelConfig(1024, _resnet(224, (3, 4, 6, 3), 64), _text()),
    "RN101": ModelConfig(512, _resnet(224, (3, 4, 23, 3), 64), _text()),
    "RN50x4": ModelConfig(640, _resnet(288, (4, 6, 10, 6), 80), _text(640, 10)),
    "ViT-B/32": ModelConfig(512, ViTConfig(224, 12, 768, 32), _text()),
    "ViT-B/16": ModelConfig(512, ViTConfig(224, 12, 768, 16), _text()),
    "ViT-L/14": ModelConfig(768, ViTConfig(224, 24, 1024, 14), _text(768, 12)),
    # Tiny members of each family, for CPU tests and the demo.
    "RN-tiny": ModelConfig(64, _resnet(64, (1, 1, 1, 1), 8, head_width=32), _text(64, 2, 2)),
    "ViT-tiny": ModelConfig(64, ViTConfig(32, 2, 64, 8, head_width=32), _text(64, 2, 2)),
    # Not a CLIP tower: a plain conv net for CPU experiments on the synthetic world (convnet.py).
    "ConvNet-tiny": ModelConfig(64, ConvNetConfig(64, (16, 32, 64), 128), _text(64, 2, 2)),
}

# open_clip's spelling of the same models ('ViT-B-32'); '-quickgelu' selects QuickGELU, which
# OpenAI's released weights were trained with.
_QUICKGELU = "-quickgelu"


def list_models() -> list[str]:
  return sorted(_CONFIGS)


def _canonical(name: str) -> tuple[str, bool]:
  quick = name.endswith(_QUICKGELU)
  base = name[: -len(_QUICKGELU)] if quick else name
  if base in _CONFIGS:
    return base, quick
  by_dash = {k.replace("/", "-"): k for k in _CONFIGS}
  if base in by_dash:
    return by_dash[base], quick
  close = difflib.get_close_matches(base, list(_CONFIGS) + list(by_dash), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise errors.UserError(f"unknown model {name!r}.{hint} Known: {', '.join(list_models())}")


def _replace(record, overrides: dict, where: str):
  fields = {f.name for f in dataclasses.fields(record)}
  for key in overrides:
    if key not in fields:
      close = difflib.get_close_matches(key, sorted(fields), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise errors.UserError(f"unknown model override {where}{key!r}.{hint}")
  return dataclasses.replace(record, **overrides)


def _tower(record: towers.TowerConfig, overrides: dict, tower: str) -> towers.TowerConfig:
  """`record` with `overrides` applied; `kind=` names another registered kind of tower,
  which starts from that kind's defaults (the other keys are then its fields)."""
  overrides = dict(overrides)
  if "kind" in overrides:
    kind = overrides.pop("kind")
    if kind != record.kind:
      record = towers.config_class(tower, kind)()
  return _replace(record, overrides, f"{tower}.")


def get_config(name: str, **overrides) -> ModelConfig:
  """The ModelConfig registered as `name`, with overrides applied (see module docstring)."""
  base, quick = _canonical(name)
  config = _CONFIGS[base]
  if quick:
    config = dataclasses.replace(config, quick_gelu=True)
  overrides = dict(overrides)
  vision = overrides.pop("vision", None) or {}
  text = overrides.pop("text", None) or {}
  config = _replace(config, overrides, "")
  config = dataclasses.replace(config, vision=_tower(config.vision, vision, "vision"),
                               text=_tower(config.text, text, "text"))
  if config.attention not in ATTENTION:
    raise errors.UserError(f"unknown model override attention={config.attention!r}; known: "
                           f"{ATTENTION}")
  if config.attention == "cudnn" and config.dtype not in ("bfloat16", "float16"):
    raise errors.UserError(f"attention='cudnn' needs dtype bfloat16 or float16, not "
                           f"{config.dtype!r}")
  for tower in ("vision", "text"):
    try:
      effective_remat(getattr(getattr(config, tower), "remat", False))
    except errors.UserError as e:
      raise errors.UserError(f"model override {tower}.{e}") from None
  return config


def build(config: ModelConfig) -> TwoTower:
  """The linen module for a ModelConfig: each tower built by its own config record."""
  args = (config.embed_dim, config.quick_gelu, jnp.dtype(config.dtype), config.attention)
  return TwoTower(towers.checked(config.vision.build(*args), towers.ImageTower),
                  towers.checked(config.text.build(*args), towers.TextTower))


def create_model(name: str, **overrides) -> TwoTower:
  """`create_model('ViT-B/32', dtype='bfloat16', vision=dict(remat=True))` -> linen module."""
  return build(get_config(name, **overrides))


def count_params(module: TwoTower) -> int:
  """Number of trainable parameters (open_clip's count: `logit_scale` included, BN stats not)."""
  import jax
  import numpy as np
  size = module.visual.image_size
  context = module.text.context_length
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), np.zeros((1, size, size, 3)),
                                              np.zeros((1, context), np.int32)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))
