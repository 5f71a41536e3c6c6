"""The tower protocol and the registry of tower kinds.

A tower kind is one config record, a frozen dataclass deriving from `TowerConfig` that holds
only its own fields and knows how to build its linen module, registered under its kind:

    @towers.register_vision("vit")
    @dataclasses.dataclass(frozen=True)
    class ViTConfig(towers.TowerConfig):
      image_size: int = 224
      ...
      def build(self, embed_dim, quick_gelu, dtype, attention) -> nn.Module: ...

The module it builds satisfies `ImageTower` (or `TextTower`): the attributes the rest of the
code reads (the evaluators' image size, context length and embedding width) are declared
there, nowhere else. `models.get_config(name, vision=dict(kind=KIND, ...))` gives a
registered model another kind of tower; `TorchNames` is a tower's part of the torch key map
(`interop/keymap.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

from cloob_jax import errors


@runtime_checkable
class ImageTower(Protocol):
  """A linen image tower: images [batch, S, S, 3] (normalised float) -> [batch, embed_dim]
  unnormalised features, `train` switching batch statistics where it has them."""
  image_size: int  # S, the side of the square images it takes
  embed_dim: int   # the width of its output features

  def __call__(self, images, train: bool = False) -> Any:
    ...


@runtime_checkable
class TextTower(Protocol):
  """A linen text tower: tokens int32 [batch, L <= context_length] -> [batch, embed_dim]
  unnormalised features."""
  context_length: int  # the longest token rows it takes
  embed_dim: int       # the width of its output features

  def __call__(self, tokens) -> Any:
    ...


@dataclasses.dataclass(frozen=True)
class TorchNames:
  """How torch (open_clip) spells a tower's linen module names: its part of the key map.

  Leaf names (kernel -> weight, ...) and array layouts are torch's own for every tower
  (`interop/keymap.py`); a tower declares only what its modules add.
  """
  # Names of linen module lists: linen 'NAME_3' is torch's ModuleList entry 'NAME.3'.
  # Regular expressions ('layer\\d' for ModifiedResNet's stages).
  lists: tuple[str, ...] = ()
  # Linen module name -> torch's ('downsample_conv' -> 'downsample.0').
  modules: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Linen modules whose leaves torch keeps on the parent as NAME_weight / NAME_bias
  # (nn.MultiheadAttention's fused 'in_proj').
  fused: tuple[str, ...] = ()

  def merged(self, other: TorchNames) -> TorchNames:
    return TorchNames(self.lists + other.lists, {**self.modules, **other.modules},
                      self.fused + other.fused)


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """The base of every tower's config record: its kind, its build and its torch names.

  A subclass is a frozen dataclass of its own fields (each with a default: the kind's
  defaults are what `vision=dict(kind=KIND)` starts from); `register_vision` or
  `register_text` sets `kind`.
  """
  kind: ClassVar[str] = ""
  torch_names: ClassVar[TorchNames] = TorchNames()

  def build(self, embed_dim: int, quick_gelu: bool, dtype: Any, attention: str) -> Any:
    """The linen module (an `ImageTower` or `TextTower`) projecting to `embed_dim`.

    `quick_gelu` and `attention` (`layers.ATTENTION`) are the model's; a tower without
    GELUs or attention layers ignores them. `dtype` is the compute dtype (a jnp.dtype).
    """
    raise NotImplementedError(f"{type(self).__name__}.build")

  def open_clip_cfg(self) -> dict[str, Any] | None:
    """The tower in open_clip's model-config schema (`vision_cfg` / `text_cfg`), or None
    when open_clip has no such tower (the torch formats of `cloob_jax.export` then refuse
    it)."""
    return None


_VISION: dict[str, type[TowerConfig]] = {}
_TEXT: dict[str, type[TowerConfig]] = {}
_TABLES = {"vision": _VISION, "text": _TEXT}


def _register(table: dict[str, type[TowerConfig]], kind: str
              ) -> Callable[[type[TowerConfig]], type[TowerConfig]]:
  def register(config_cls: type[TowerConfig]) -> type[TowerConfig]:
    if not (isinstance(config_cls, type) and issubclass(config_cls, TowerConfig)
            and dataclasses.is_dataclass(config_cls)):
      raise TypeError(f"tower kind {kind!r}: {config_cls!r} is not a TowerConfig dataclass")
    if kind in table and table[kind] is not config_cls:
      raise ValueError(f"tower kind {kind!r} is registered twice ({table[kind].__name__}, "
                       f"{config_cls.__name__})")
    config_cls.kind = kind
    table[kind] = config_cls
    return config_cls
  return register


def register_vision(kind: str) -> Callable[[type[TowerConfig]], type[TowerConfig]]:
  """Class decorator: registers an image tower's config record as `kind`."""
  return _register(_VISION, kind)


def register_text(kind: str) -> Callable[[type[TowerConfig]], type[TowerConfig]]:
  """Class decorator: registers a text tower's config record as `kind`."""
  return _register(_TEXT, kind)


def unregister(tower: str, kind: str) -> None:
  """Forgets the `tower` ('vision' or 'text') kind `kind` (tests register toy kinds)."""
  del _TABLES[tower][kind]


def kinds(tower: str) -> tuple[str, ...]:
  """The registered kinds of `tower` ('vision' or 'text'), in registration order."""
  return tuple(_TABLES[tower])


def config_class(tower: str, kind: str) -> type[TowerConfig]:
  """The config record registered as `tower` ('vision' or 'text') kind `kind`."""
  table = _TABLES[tower]
  if kind not in table:
    raise errors.UserError(f"unknown model override {tower}.kind={kind!r}; known: "
                           f"{tuple(table)}")
  return table[kind]


def checked(module, protocol: type) -> Any:
  """`module`, when it has the attributes of `protocol` (ImageTower or TextTower)."""
  if not isinstance(module, protocol):
    missing = [name for name in protocol.__annotations__ if not hasattr(module, name)]
    raise TypeError(f"{type(module).__name__} is no {protocol.__name__}: it lacks "
                    f"{', '.join(missing) or '__call__'}")
  return module
