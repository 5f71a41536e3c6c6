"""CLIP's Vision Transformer: bias-free patch embedding, class token, LN before and after."""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

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

  torch_names = nnl.TRANSFORMER_TORCH_NAMES

  def build(self, embed_dim, quick_gelu, dtype, attention) -> nn.Module:
    return VisionTransformer(embed_dim, self.image_size, self.patch_size, self.width,
                             self.layers, self.head_width, self.mlp_ratio, quick_gelu,
                             self.remat, dtype, attention, scan=self.scan)

  def open_clip_cfg(self):
    return {"image_size": self.image_size, "layers": self.layers, "width": self.width,
            "patch_size": self.patch_size, "head_width": self.head_width,
            "mlp_ratio": self.mlp_ratio}


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

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # no batch statistics in this tower
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
    x = nnl.LayerNorm(self.dtype, name="ln_pre")(x)
    x = nnl.Transformer(self.width, self.layers, self.width // self.head_width,
                        self.mlp_ratio, self.quick_gelu, self.remat, self.dtype,
                        self.attention, scan=self.scan, name="transformer")(x, rows=0)
    x = nnl.LayerNorm(self.dtype, name="ln_post")(x)  # the class token's row only
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.embed_dim),
                      jnp.float32)
    return x @ proj.astype(self.dtype)
