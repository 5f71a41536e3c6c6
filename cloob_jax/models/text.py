"""CLIP's text tower: causal pre-LN transformer pooled at the end-of-text token."""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from cloob_jax.models import layers as nnl
from cloob_jax.models import towers


@towers.register_text("transformer")
@dataclasses.dataclass(frozen=True)
class TextConfig(towers.TowerConfig):
  """CLIP's text tower, in open_clip's text_cfg terms (defaults: the ViT-B models')."""
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_ratio: float = 4.0
  remat: bool | str | None = None  # True or "full", "dots"; None: layers.effective_remat
  scan: bool | None = None  # the blocks as one lax.scan; None: layers.scans decides

  torch_names = nnl.TRANSFORMER_TORCH_NAMES

  def build(self, embed_dim, quick_gelu, dtype, attention) -> nn.Module:
    return TextTransformer(embed_dim, self.context_length, self.vocab_size, self.width,
                           self.heads, self.layers, self.mlp_ratio, quick_gelu, self.remat,
                           dtype, attention, scan=self.scan)

  def open_clip_cfg(self):
    return {"context_length": self.context_length, "vocab_size": self.vocab_size,
            "width": self.width, "heads": self.heads, "layers": self.layers,
            "mlp_ratio": self.mlp_ratio}


class TextTransformer(nn.Module):
  """tokens int32 [batch, context_length] -> unnormalised features [batch, embed_dim].

  Pooling takes the position of the highest token id in each row, which is CLIP's
  end-of-text token (49407); the row's features there have seen the whole caption.
  """
  embed_dim: int
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_ratio: float = 4.0
  quick_gelu: bool = False
  remat: bool | str | None = None
  dtype: nnl.Dtype = jnp.float32
  attention: str = "einsum"  # layers.attention's implementation
  scan: bool | None = None

  @nn.compact
  def __call__(self, tokens):
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(f"tokens have length {length} > context_length {self.context_length}")
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 param_dtype=jnp.float32, name="token_embedding")(tokens)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                     (self.context_length, self.width), jnp.float32)
    x = (x + pos[:length]).astype(self.dtype)
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    eot = jnp.argmax(tokens, axis=-1)  # first occurrence of the highest id, as torch.argmax
    # Only the end-of-text rows leave the stack (its last block computes them alone).
    x = nnl.Transformer(self.width, self.layers, self.heads, self.mlp_ratio, self.quick_gelu,
                        self.remat, self.dtype, self.attention, causal=True,
                        scan=self.scan, name="transformer")(x, causal, rows=eot)
    pooled = nnl.LayerNorm(self.dtype, name="ln_final")(x)
    proj = self.param("text_projection", nn.initializers.normal(self.width**-0.5),
                      (self.width, self.embed_dim), jnp.float32)
    return pooled @ proj.astype(self.dtype)
