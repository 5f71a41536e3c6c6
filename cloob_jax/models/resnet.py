"""CLIP's ModifiedResNet: 3-conv stem, anti-aliased (avg-pool) strides, attention pooling."""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cloob_jax.models import layers as nnl
from cloob_jax.models import towers


@towers.register_vision("resnet")
@dataclasses.dataclass(frozen=True)
class ModifiedResNetConfig(towers.TowerConfig):
  """A ModifiedResNet image tower, in open_clip's vision_cfg terms (defaults: RN50's)."""
  image_size: int = 224
  layers: tuple[int, ...] = (3, 4, 6, 3)  # Bottleneck blocks per stage
  width: int = 64  # the stem's width; stage i has width * 2**i planes
  head_width: int = 64  # of the attention pool: heads = width * 32 // head_width
  remat: bool | str = False  # rematerialise the blocks: True or "full", "dots" (effective_remat)

  # `layer2_1` is torch's Sequential entry `layer2.1`; a block's downsample Sequential.
  torch_names = towers.TorchNames(lists=(r"layer\d",), modules={
      "downsample_conv": "downsample.0", "downsample_bn": "downsample.1"})

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(self.layers))  # a list from a config file

  def build(self, embed_dim, quick_gelu, dtype, attention) -> nn.Module:
    del quick_gelu, attention  # no GELUs; the attention pool is one query (einsum)
    return ModifiedResNet(embed_dim, self.image_size, self.layers, self.width,
                          self.head_width, self.remat, dtype)

  def open_clip_cfg(self):
    return {"image_size": self.image_size, "layers": list(self.layers), "width": self.width,
            "patch_size": None, "head_width": self.head_width}


def _conv(features, kernel, dtype, name, std=None):
  init = (nn.initializers.normal(std) if std is not None
          else nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name)


def _avg_pool(x, stride):
  return nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding="VALID")


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> avg-pool(stride) -> 1x1 (x4), with an avg-pool + 1x1 conv downsample."""
  planes: int
  stride: int = 1
  dtype: nnl.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = _conv(self.planes, 1, self.dtype, "conv1")(x)
    out = jax.nn.relu(nnl.batch_norm(out, train, self.dtype, "bn1"))
    out = _conv(self.planes, 3, self.dtype, "conv2")(out)
    out = jax.nn.relu(nnl.batch_norm(out, train, self.dtype, "bn2"))
    if self.stride > 1:
      out = _avg_pool(out, self.stride)
    # bn3 starts at zero so each block starts as the identity (as open_clip initialises it).
    out = _conv(self.planes * 4, 1, self.dtype, "conv3")(out)
    out = nnl.batch_norm(out, train, self.dtype, "bn3", zero_init=True)
    identity = x
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      identity = _avg_pool(x, self.stride) if self.stride > 1 else x
      identity = _conv(self.planes * 4, 1, self.dtype, "downsample_conv")(identity)
      identity = nnl.batch_norm(identity, train, self.dtype, "downsample_bn")
    return jax.nn.relu(out + identity)


class AttentionPool2d(nn.Module):
  """Multi-head attention of the mean token (query) over [mean; spatial tokens] + positions."""
  spatial: int  # side of the final feature map (image_size // 32)
  heads: int
  output_dim: int
  dtype: nnl.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    x = jnp.concatenate([jnp.mean(x, axis=1, keepdims=True, dtype=jnp.float32).astype(x.dtype), x],
                        axis=1)
    pos = self.param("positional_embedding", nn.initializers.normal(c**-0.5),
                     (self.spatial**2 + 1, c), jnp.float32)
    x = x + pos.astype(self.dtype)
    std = c**-0.5
    head_dim = c // self.heads
    q = nnl.dense(c, self.dtype, "q_proj", std)(x[:, :1]).reshape(b, 1, self.heads, head_dim)
    k = nnl.dense(c, self.dtype, "k_proj", std)(x).reshape(b, -1, self.heads, head_dim)
    v = nnl.dense(c, self.dtype, "v_proj", std)(x).reshape(b, -1, self.heads, head_dim)
    out = nnl.attention(q, k, v, dtype=self.dtype).reshape(b, c)
    return nnl.dense(self.output_dim, self.dtype, "c_proj", std)(out)


class ModifiedResNet(nn.Module):
  """images [batch, H, W, 3] (normalised float) -> unnormalised features [batch, embed_dim]."""
  embed_dim: int
  image_size: int = 224
  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  head_width: int = 64
  remat: bool | str = False  # nnl.effective_remat
  dtype: nnl.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    nnl.check_image_size(images, self.image_size)
    x = images.astype(self.dtype)
    stem = [(self.width // 2, 2), (self.width // 2, 1), (self.width, 1)]
    x = nnl.conv_bn_relu_layers(x, stem, train, self.dtype)
    x = _avg_pool(x, 2)
    remat, policy = nnl.remat_policy(self.remat)
    block = nn.remat(Bottleneck, static_argnums=(2,), policy=policy) if remat else Bottleneck
    for stage, blocks in enumerate(self.layers):
      planes = self.width * 2**stage
      for j in range(blocks):
        stride = 2 if (stage > 0 and j == 0) else 1
        x = block(planes, stride, self.dtype, name=f"layer{stage + 1}_{j}")(x, train)
    heads = self.width * 32 // self.head_width
    return AttentionPool2d(self.image_size // 32, heads, self.embed_dim, self.dtype,
                           name="attnpool")(x)
