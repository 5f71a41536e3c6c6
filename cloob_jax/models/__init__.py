"""Pure linen modules: text transformer, ViT, ModifiedResNet, a plain ConvNet, the two-tower
model; the tower protocol and kinds (towers.py); the model registry."""

from cloob_jax.models import registry  # first: it imports the tower kinds in their order
from cloob_jax.models import towers
from cloob_jax.models.convnet import ConvNetConfig
from cloob_jax.models.registry import ModelConfig
from cloob_jax.models.registry import build
from cloob_jax.models.registry import count_params
from cloob_jax.models.registry import create_model
from cloob_jax.models.registry import get_config
from cloob_jax.models.registry import list_models
from cloob_jax.models.resnet import ModifiedResNetConfig
from cloob_jax.models.text import TextConfig
from cloob_jax.models.towers import ImageTower
from cloob_jax.models.towers import TextTower
from cloob_jax.models.towers import TowerConfig
from cloob_jax.models.two_tower import TwoTower
from cloob_jax.models.two_tower import variables
from cloob_jax.models.vit import ViTConfig

__all__ = ["ConvNetConfig", "ImageTower", "ModelConfig", "ModifiedResNetConfig", "TextConfig",
           "TextTower", "TowerConfig", "TwoTower", "ViTConfig", "build", "count_params",
           "create_model", "get_config", "list_models", "towers", "variables"]
