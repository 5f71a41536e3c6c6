"""The tower registry: a toy image tower registered from this test trains and embeds through
the public API (config overrides, the train step, the evaluators' Embedder), with no edit
elsewhere."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cloob_jax import config_lib
from cloob_jax import models
from cloob_jax import parallel
from cloob_jax import train
from cloob_jax.data import transforms
from cloob_jax.evaluators import common
from cloob_jax.interop import keymap
from cloob_jax.models import towers

from train_test import _demo_config  # pylint: disable=g-bad-import-order

KIND = "toy_mean_pool"
SIZE = 16


class MeanPoolTower(nn.Module):
  """images [b, S, S, 3] -> the mean colour -> Dense -> ReLU -> Dense to embed_dim."""
  embed_dim: int
  image_size: int
  width: int

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train
    x = jnp.mean(images, axis=(1, 2))
    x = jax.nn.relu(nn.Dense(self.width, name="fc")(x))
    return nn.Dense(self.embed_dim, name="proj")(x)


@dataclasses.dataclass(frozen=True)
class MeanPoolConfig(towers.TowerConfig):
  image_size: int = 32
  width: int = 16

  def build(self, embed_dim, quick_gelu, dtype, attention):
    del quick_gelu, dtype, attention
    return MeanPoolTower(embed_dim, self.image_size, self.width)


@dataclasses.dataclass(frozen=True)
class NoSizeConfig(towers.TowerConfig):
  def build(self, embed_dim, quick_gelu, dtype, attention):
    return nn.Dense(embed_dim)  # no image_size: not an ImageTower


@pytest.fixture
def toy_kind():
  towers.register_vision(KIND)(MeanPoolConfig)
  towers.register_vision("toy_no_size")(NoSizeConfig)
  try:
    yield KIND
  finally:
    towers.unregister("vision", KIND)
    towers.unregister("vision", "toy_no_size")


def _config():
  config = _demo_config("tiny=True,evals=False,batch_size=16,steps=4")
  config.model.overrides.vision = ml_collections.ConfigDict(
      dict(kind=KIND, image_size=SIZE, width=24))
  return config


def test_a_toy_tower_registered_here_trains_and_embeds(toy_kind):
  config = _config()
  config_lib.validate(config)  # known to the config check without an edit there
  setup = train.create_train_setup(config, mesh=parallel.make_mesh(1))
  assert setup.model_config.vision == MeanPoolConfig(image_size=SIZE, width=24)
  assert setup.model_config.vision_kind == toy_kind
  assert isinstance(setup.model.visual, models.ImageTower)

  state = setup.init(0)
  assert set(state["params"]["visual"]) == {"fc", "proj"}
  rng = np.random.default_rng(0)
  context = setup.model_config.text.context_length
  batches = [{"image": rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8),
              "tokens": rng.integers(1, 400, (16, context)).astype(np.int32)}
             for _ in range(2)]
  before = jax.tree.map(np.asarray, state["params"]["visual"])
  for batch in batches:
    state, metrics = setup.step(state, jax.device_put(batch, setup.batch_sharding))
    assert np.isfinite(float(metrics["loss"]))
  after = jax.tree.map(np.asarray, state["params"]["visual"])
  assert any(np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(before),
                                                     jax.tree.leaves(after)))

  # The evaluators read the tower through the protocol: image_size, embed_dim.
  embedder = common.Embedder(setup.model, batch_size=8, progress=False)
  assert embedder.image_size == SIZE
  assert embedder.embed_dim == setup.model_config.embed_dim
  variables = {"params": jax.tree.map(np.asarray, state["params"])}
  images = batches[0]["image"][:5]
  got = embedder.embed_images(variables, images)
  module = setup.model
  normalised = (images / 255.0 - np.asarray(transforms.CLIP_MEAN)) / np.asarray(transforms.CLIP_STD)
  want = module.apply(variables, normalised.astype(np.float32), method=module.encode_image)
  assert got.shape == (5, setup.model_config.embed_dim)
  np.testing.assert_allclose(got, want, atol=1e-5)

  # Torch names: a kind that declares none gets torch's leaf names only.
  names = keymap.tower_names(setup.model_config)
  assert keymap.torch_key(("visual", "fc", "kernel"), "params", names) == "visual.fc.weight"


def test_a_toy_kind_is_refused_by_field_and_by_protocol(toy_kind):
  with pytest.raises(ValueError, match=r"unknown model override vision.'widht'.*'width'"):
    models.get_config("ViT-tiny", vision=dict(kind=toy_kind, widht=3))
  with pytest.raises(TypeError, match="Dense is no ImageTower: it lacks image_size, embed_dim"):
    models.create_model("ViT-tiny", vision=dict(kind="toy_no_size"))
  assert toy_kind in towers.kinds("vision")


def test_unregistered_after_use():
  assert KIND not in towers.kinds("vision")
  with pytest.raises(ValueError, match=f"unknown model override vision.kind='{KIND}'; known: "
                                       r"\('vit', 'resnet', 'convnet'\)"):
    models.get_config("ViT-tiny", vision=dict(kind=KIND))
