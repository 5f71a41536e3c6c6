"""A plain conv net for CPU runs: strided conv-BN-ReLU stages and a flattened head.

The demo's image tower (`configs/demo.py`).

Not a CLIP tower, and not in open_clip. On the synthetic world (64 px, objects ~8-20 px)
CLIP's ModifiedResNet at CPU size learns shape slowly even with labels (a thin stem, then
a global attention pool over a 2x2 map). A few strided 3x3 convs and a dense layer over the
whole final map (position-aware, like a ViT's tokens) learn shape and position from labels
several times faster: shape 77% against RN-tiny's 32% after 400 supervised steps.
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cloob_jax import errors
from cloob_jax.models import layers as nnl
from cloob_jax.models import towers


@towers.register_vision("convnet")
@dataclasses.dataclass(frozen=True)
class ConvNetConfig(towers.TowerConfig):
  """The plain conv net's tower (defaults: ConvNet-tiny's). open_clip has no such tower."""
  image_size: int = 64
  channels: tuple[int, ...] = (16, 32, 64)  # one stride-2 3x3 conv-BN-ReLU per entry
  dense_width: int = 128  # the dense layer over the flattened final map
  # Not supported (nothing to rematerialise); a field so that `vision=dict(remat=True)`,
  # which every other image tower takes, is refused by name.
  remat: bool = False

  def __post_init__(self):
    object.__setattr__(self, "channels", tuple(self.channels))  # a list from a config file
    if self.remat:
      raise errors.UserError("vision.remat: the ConvNet tower has no rematerialisation")

  def build(self, embed_dim, quick_gelu, dtype, attention) -> nn.Module:
    del quick_gelu, attention  # ReLUs, no attention
    return ConvNet(embed_dim, self.image_size, self.channels, self.dense_width, dtype)


class ConvNet(nn.Module):
  """images [batch, H, W, 3] (normalised float) -> unnormalised features [batch, embed_dim]."""
  embed_dim: int
  image_size: int = 64
  channels: Sequence[int] = (16, 32, 64)  # one stride-2 3x3 conv per entry
  dense_width: int = 128  # width of the dense layer over the flattened final map
  dtype: nnl.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    nnl.check_image_size(images, self.image_size)
    x = nnl.conv_bn_relu_layers(images.astype(self.dtype), [(c, 2) for c in self.channels],
                                train, self.dtype)
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(nn.Dense(self.dense_width, dtype=self.dtype, param_dtype=jnp.float32,
                             name="fc")(x))
    return nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32, name="proj")(x)
