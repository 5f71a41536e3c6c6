"""The two-tower image-text model: composes an image tower and a text tower, nothing more."""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cloob_jax.models import layers
from cloob_jax.models import towers

# open_clip's initial log(1/0.07): what a bare `init` holds. The train state replaces it with
# the objective's declared initial value (`objectives.registry.LOG_INV_TAU`: config.inv_tau).
_LOGIT_SCALE_INIT = math.log(1 / 0.07)


class TwoTower(nn.Module):
  """CLIP/CLOOB model. Embeddings are L2-normalised float32 [batch, embed_dim].

  `logit_scale` is the log of the inverse temperature (open_clip's name and convention), a
  param so that checkpoints and torch state dicts carry it. The model never decides its
  value: `train.init_state` sets it from the objective's declaration, the train step passes
  it through a stop_gradient unless `config.learn_inv_tau`, and clips it to the declared
  range after each update.
  """
  visual: towers.ImageTower
  text: towers.TextTower

  def setup(self):
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(_LOGIT_SCALE_INIT),
                                  (), jnp.float32)

  def encode_image(self, images, train: bool = False):
    """images [batch, H, W, 3], CLIP-normalised float -> [batch, embed_dim] unit rows."""
    return layers.l2_normalize(self.visual(images, train=train))

  def encode_text(self, tokens):
    """tokens int32 [batch, context_length] -> [batch, embed_dim] unit rows."""
    return layers.l2_normalize(self.text(tokens))

  def __call__(self, images, tokens, train: bool = False) -> tuple[Any, Any]:
    """Returns (image_embeddings, text_embeddings). The temperature is params['logit_scale'],
    which the objective reads (clipped) from the params, not from the model's outputs."""
    return self.encode_image(images, train=train), self.encode_text(tokens)


def variables(params, batch_stats=None) -> dict[str, Any]:
  """The variables `TwoTower.apply` takes: {'params'}, plus 'batch_stats' for towers with
  BatchNorm (an empty or missing collection is left out)."""
  out = {"params": params}
  if batch_stats:
    out["batch_stats"] = batch_stats
  return out
