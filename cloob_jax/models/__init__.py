"""Pure linen modules: text transformer, ViT, ModifiedResNet, a plain ConvNet, the two-tower
model, registry."""

from cloob_jax.models.registry import ModelConfig
from cloob_jax.models.registry import TextConfig
from cloob_jax.models.registry import VisionConfig
from cloob_jax.models.registry import build
from cloob_jax.models.registry import count_params
from cloob_jax.models.registry import create_model
from cloob_jax.models.registry import get_config
from cloob_jax.models.registry import list_models
from cloob_jax.models.two_tower import TwoTower

__all__ = ["ModelConfig", "TextConfig", "VisionConfig", "TwoTower", "build", "count_params", "create_model",
           "get_config", "list_models"]
