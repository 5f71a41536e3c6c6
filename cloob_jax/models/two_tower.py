"""The two-tower image-text model: composes an image tower and a text tower, nothing more."""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cloob_jax.models import layers


class TwoTower(nn.Module):
  """CLIP/CLOOB model. Embeddings are L2-normalised float32 [batch, embed_dim].

  `logit_scale` is the log of the inverse temperature (open_clip's name and convention);
  whether it is trained or fixed is the optimizer's business, not the model's.
  """
  visual: nn.Module
  text: nn.Module
  init_logit_scale: float = math.log(1 / 0.07)

  def setup(self):
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.init_logit_scale),
                                  (), jnp.float32)

  def encode_image(self, images, train: bool = False):
    """images [batch, H, W, 3], CLIP-normalised float -> [batch, embed_dim] unit rows."""
    return layers.l2_normalize(self.visual(images, train=train))

  def encode_text(self, tokens):
    """tokens int32 [batch, context_length] -> [batch, embed_dim] unit rows."""
    return layers.l2_normalize(self.text(tokens))

  def __call__(self, images, tokens, train: bool = False) -> tuple[Any, Any, Any]:
    """Returns (image_embeddings, text_embeddings, inverse_temperature = exp(logit_scale))."""
    return (self.encode_image(images, train=train), self.encode_text(tokens),
            jnp.exp(self.logit_scale))
