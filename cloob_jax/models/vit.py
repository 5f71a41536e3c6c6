"""CLIP's Vision Transformer: bias-free patch embedding, class token, LN before and after."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cloob_jax import errors
from cloob_jax.models import layers as nnl
from cloob_jax.models import towers


@towers.register_vision("vit")
@dataclasses.dataclass(frozen=True)
class ViTConfig(towers.TowerConfig):
  """A ViT image tower, in open_clip's vision_cfg terms (defaults: ViT-B/32's)."""
  image_size: int = 224
  layers: int = 12  # depth: residual attention blocks
  width: int = 768
  patch_size: int = 32
  head_width: int = 64  # heads = width // head_width
  mlp_ratio: float = 4.0
  remat: bool | str | None = None  # True or "full", "dots"; None: layers.effective_remat
  scan: bool | None = None  # the blocks as one lax.scan; None: layers.scans decides
  # FLIP's patch dropout: the fraction of patch tokens each training example drops (never the
  # class token), drawn from the 'dropout' rng; eval always sees every token (`keep_count`).
  patch_dropout: float = 0.0

  torch_names = nnl.TRANSFORMER_TORCH_NAMES

  def __post_init__(self):
    if not 0.0 <= self.patch_dropout < 1.0:
      raise errors.UserError(f"model override vision.patch_dropout={self.patch_dropout!r}: "
                             "expected a fraction in [0, 1)")

  def build(self, embed_dim, quick_gelu, dtype, attention) -> nn.Module:
    return VisionTransformer(embed_dim, self.image_size, self.patch_size, self.width,
                             self.layers, self.head_width, self.mlp_ratio, quick_gelu,
                             self.remat, dtype, attention, scan=self.scan,
                             patch_dropout=self.patch_dropout)

  def open_clip_cfg(self):
    # No patch_dropout: it is a training recipe, not the architecture, and open_clip would
    # drop patches in its own train mode; the exported tower is the plain ViT.
    return {"image_size": self.image_size, "layers": self.layers, "width": self.width,
            "patch_size": self.patch_size, "head_width": self.head_width,
            "mlp_ratio": self.mlp_ratio}


def keep_count(num_patches: int, rate: float) -> int:
  """Patch tokens an example keeps at patch dropout `rate` (open_clip's count: at least one)."""
  return max(1, int(num_patches * (1.0 - rate)))


def drop_patches(x, rate: float, rng):
  """x [batch, 1 + patches, width] (class token first) -> [batch, 1 + keep_count, width].

  Each example keeps its class token and `keep_count(patches, rate)` of its patch tokens,
  chosen uniformly without replacement by `rng` (the same rng, the same choice). The kept
  tokens carry their positional embeddings already, so their order does not matter.
  """
  b, n = x.shape[0], x.shape[1] - 1
  keep = keep_count(n, rate)
  _, kept = jax.lax.top_k(jax.random.uniform(rng, (b, n)), keep)  # [batch, keep]
  patches = jnp.take_along_axis(x[:, 1:], kept[..., None], axis=1)
  return jnp.concatenate([x[:, :1], patches], axis=1)


class VisionTransformer(nn.Module):
  """images [batch, H, W, 3] (normalised float) -> unnormalised features [batch, embed_dim]."""
  embed_dim: int
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  layers: int = 12
  head_width: int = 64
  mlp_ratio: float = 4.0
  quick_gelu: bool = False
  remat: bool | str | None = None
  dtype: nnl.Dtype = jnp.float32
  attention: str = "einsum"  # layers.attention's implementation
  scan: bool | None = None
  patch_dropout: float = 0.0  # ViTConfig.patch_dropout

  @nn.compact
  def __call__(self, images, train: bool = False):
    """`train` with a 'dropout' rng applies patch dropout; there are no batch statistics."""
    grid = self.image_size // self.patch_size
    nnl.check_image_size(images, self.image_size)
    x = nn.Conv(self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
                padding="VALID", use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                name="conv1")(images.astype(self.dtype))
    b = x.shape[0]
    x = x.reshape(b, grid * grid, self.width)  # row-major patches, as torch's flatten(2)
    scale = self.width**-0.5
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,), jnp.float32)
    pos = self.param("positional_embedding", nn.initializers.normal(scale),
                     (grid * grid + 1, self.width), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width)), x], axis=1)
    x = (x + pos).astype(self.dtype)
    # Only the pre-training step passes a 'dropout' rng (train.train_step): eval, and a
    # fine-tuning step without one, see every token.
    if train and self.patch_dropout > 0 and self.has_rng("dropout"):
      x = drop_patches(x, self.patch_dropout, self.make_rng("dropout"))
    x = nnl.LayerNorm(self.dtype, name="ln_pre")(x)
    x = nnl.Transformer(self.width, self.layers, self.width // self.head_width,
                        self.mlp_ratio, self.quick_gelu, self.remat, self.dtype,
                        self.attention, scan=self.scan, name="transformer")(x, rows=0)
    x = nnl.LayerNorm(self.dtype, name="ln_post")(x)  # the class token's row only
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.embed_dim),
                      jnp.float32)
    return x @ proj.astype(self.dtype)
