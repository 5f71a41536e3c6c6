"""Model configurations (open_clip's, plus tiny ones for CPU) and `create_model`.

Configs are small frozen records like open_clip's JSON files. `create_model(name, **overrides)`
applies overrides to the top level (`embed_dim=`, `quick_gelu=`, `dtype=`) or to a tower with a
dict (`vision=dict(remat=True)`, `text=dict(layers=2)`); unknown keys are refused by name.
"""

import dataclasses
import difflib
import math
from typing import Any

import jax.numpy as jnp

from cloob_jax import errors

from cloob_jax.models.convnet import ConvNet
from cloob_jax.models.layers import ATTENTION
from cloob_jax.models.resnet import ModifiedResNet
from cloob_jax.models.text import TextTransformer
from cloob_jax.models.two_tower import TwoTower
from cloob_jax.models.vit import VisionTransformer


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  # ViT: an int, the depth. ModifiedResNet: a 4-tuple, blocks per stage. ConvNet: a tuple of
  # channel counts, one stride-2 conv each.
  layers: Any = 12
  width: int = 768  # ConvNet: the width of its dense layer over the flattened final map
  patch_size: int | None = 32  # None for ModifiedResNet
  head_width: int = 64
  mlp_ratio: float = 4.0
  remat: bool = False
  kind: str = ""  # "convnet"; "" means ViT for an int `layers`, ModifiedResNet for a tuple


@dataclasses.dataclass(frozen=True)
class TextConfig:
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_ratio: float = 4.0
  remat: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  embed_dim: int
  vision: VisionConfig
  text: TextConfig
  quick_gelu: bool = False
  init_logit_scale: float = math.log(1 / 0.07)
  dtype: str = "float32"  # compute dtype of activations; parameters stay float32
  # The transformers' attention (models.layers.attention): 'einsum' (float32 logits, equal to
  # open_clip), or jax.nn.dot_product_attention's 'xla' or 'cudnn' (bfloat16/float16 only).
  attention: str = "einsum"

  @property
  def vision_kind(self) -> str:
    """'vit', 'resnet' (CLIP's ModifiedResNet) or 'convnet'."""
    if self.vision.kind:
      return self.vision.kind
    return "resnet" if isinstance(self.vision.layers, (tuple, list)) else "vit"

  @property
  def is_resnet(self) -> bool:
    return self.vision_kind == "resnet"


def _text(width=512, heads=8, layers=12):
  return TextConfig(width=width, heads=heads, layers=layers)


_CONFIGS: dict[str, ModelConfig] = {
    "RN50": ModelConfig(1024, VisionConfig(224, (3, 4, 6, 3), 64, None), _text()),
    "RN101": ModelConfig(512, VisionConfig(224, (3, 4, 23, 3), 64, None), _text()),
    "RN50x4": ModelConfig(640, VisionConfig(288, (4, 6, 10, 6), 80, None), _text(640, 10)),
    "ViT-B/32": ModelConfig(512, VisionConfig(224, 12, 768, 32), _text()),
    "ViT-B/16": ModelConfig(512, VisionConfig(224, 12, 768, 16), _text()),
    "ViT-L/14": ModelConfig(768, VisionConfig(224, 24, 1024, 14), _text(768, 12)),
    # Tiny members of each family, for CPU tests and the demo.
    "RN-tiny": ModelConfig(64, VisionConfig(64, (1, 1, 1, 1), 8, None, head_width=32),
                           _text(64, 2, 2)),
    "ViT-tiny": ModelConfig(64, VisionConfig(32, 2, 64, 8, head_width=32), _text(64, 2, 2)),
    # Not a CLIP tower: a plain conv net for CPU experiments on the synthetic world (convnet.py).
    "ConvNet-tiny": ModelConfig(64, VisionConfig(64, (16, 32, 64), 128, None, kind="convnet"),
                                _text(64, 2, 2)),
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


_VISION_KINDS = ("vit", "resnet", "convnet")


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
  config = dataclasses.replace(config, vision=_replace(config.vision, dict(vision), "vision."),
                               text=_replace(config.text, dict(text), "text."))
  if config.attention not in ATTENTION:
    raise errors.UserError(f"unknown model override attention={config.attention!r}; known: "
                           f"{ATTENTION}")
  if config.attention == "cudnn" and config.dtype not in ("bfloat16", "float16"):
    raise errors.UserError(f"attention='cudnn' needs dtype bfloat16 or float16, not "
                           f"{config.dtype!r}")
  if config.vision_kind not in _VISION_KINDS:
    raise errors.UserError(f"unknown model override vision.kind={config.vision.kind!r}; known: "
                           f"{_VISION_KINDS}")
  return config


def build(config: ModelConfig) -> TwoTower:
  """The linen module for a ModelConfig."""
  dtype = jnp.dtype(config.dtype)
  v, t = config.vision, config.text
  if config.vision_kind == "convnet":
    if v.remat:
      raise errors.UserError("vision.remat: the ConvNet tower has no rematerialisation")
    visual = ConvNet(config.embed_dim, v.image_size, tuple(v.layers), v.width, dtype)
  elif config.is_resnet:
    visual = ModifiedResNet(config.embed_dim, v.image_size, tuple(v.layers), v.width, v.head_width,
                            v.remat, dtype)
  else:
    visual = VisionTransformer(config.embed_dim, v.image_size, v.patch_size, v.width, v.layers,
                               v.head_width, v.mlp_ratio, config.quick_gelu, v.remat, dtype,
                               config.attention)
  text = TextTransformer(config.embed_dim, t.context_length, t.vocab_size, t.width, t.heads,
                         t.layers, t.mlp_ratio, config.quick_gelu, t.remat, dtype,
                         config.attention)
  return TwoTower(visual, text, config.init_logit_scale)


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
