"""Patch dropout (FLIP) in the ViT tower: training keeps an exact, rng-determined share of the
patch tokens and the class token; rate 0 and eval are today's model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import models
from cloob_jax import train
from cloob_jax.models import vit


def _setup(rate, n=4):
  config = models.get_config("ViT-tiny", vision=dict(patch_dropout=rate))
  model = models.build(config)
  size = config.vision.image_size
  images = jax.random.normal(jax.random.key(0), (n, size, size, 3))
  tokens = jnp.zeros((n, config.text.context_length), jnp.int32).at[:, 0].set(49406)
  tokens = tokens.at[:, 3].set(49407).at[:, 1:3].set(7)
  variables = model.init(jax.random.key(1), images, tokens)
  return config, model, variables, images


def _embed(model, variables, images, train_mode, rng=None):
  rngs = {"dropout": rng} if rng is not None else {}
  return model.apply(variables, images, train=train_mode, rngs=rngs, method=model.encode_image)


def test_rate_0_gives_todays_values_and_gradients():
  _, plain, variables, images = _setup(0.0)
  today = models.create_model("ViT-tiny")

  def value_and_grad(model, rng):
    def loss(params):
      emb = _embed(model, {"params": params}, images, True, rng)
      return jnp.sum(emb * jnp.arange(emb.shape[-1]))
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  value, grads = value_and_grad(plain, jax.random.key(5))
  want, want_grads = value_and_grad(today, None)
  assert value == want
  jax.tree.map(np.testing.assert_array_equal, grads, want_grads)


@pytest.mark.parametrize("rate", [0.5, 0.3, 0.9])
def test_the_kept_count_is_exact_and_the_class_token_always_kept(rate):
  b, n, w = 3, 16, 5
  x = jnp.arange(b * (n + 1) * w, dtype=jnp.float32).reshape(b, n + 1, w)
  out = vit.drop_patches(x, rate, jax.random.key(0))
  keep = vit.keep_count(n, rate)
  assert keep == max(1, int(n * (1 - rate)))
  assert out.shape == (b, 1 + keep, w)
  np.testing.assert_array_equal(out[:, 0], x[:, 0])  # the class token
  for i in range(b):
    rows = [int(r) for r in out[i, 1:, 0] // w - i * (n + 1)]
    assert len(set(rows)) == keep and all(1 <= r <= n for r in rows)  # distinct patches


def test_the_tower_sees_the_kept_tokens_only_in_training():
  config, model, variables, images = _setup(0.5)
  grid = config.vision.image_size // config.vision.patch_size
  keep = vit.keep_count(grid * grid, 0.5)

  def tokens_seen(train_mode, rng):
    _, state = model.apply(variables, images, train=train_mode, rngs={"dropout": rng},
                           method=model.encode_image, capture_intermediates=(
                               lambda m, method: m.name == "ln_pre"))
    return state["intermediates"]["visual"]["ln_pre"]["__call__"][0].shape[1]

  assert tokens_seen(True, jax.random.key(2)) == 1 + keep
  assert tokens_seen(False, jax.random.key(2)) == 1 + grid * grid


def test_eval_is_unchanged_and_the_draw_follows_the_rng():
  _, model, variables, images = _setup(0.5)
  today = models.create_model("ViT-tiny")
  want = _embed(today, variables, images, False)
  for train_mode, rng in ((False, None), (False, jax.random.key(3)), (True, None)):
    # Eval, and a train-mode call given no 'dropout' rng (fine-tuning), see every token.
    np.testing.assert_array_equal(_embed(model, variables, images, train_mode, rng), want)
  a = _embed(model, variables, images, True, jax.random.key(3))
  np.testing.assert_array_equal(a, _embed(model, variables, images, True, jax.random.key(3)))
  assert not np.allclose(a, _embed(model, variables, images, True, jax.random.key(4)))
  assert not np.allclose(a, want)


def test_a_rate_outside_0_to_1_is_one_line_naming_the_override():
  for rate in (1.0, -0.1):
    with pytest.raises(errors.UserError, match=r"vision.patch_dropout=.*\[0, 1\)"):
      models.get_config("ViT-tiny", vision=dict(patch_dropout=rate))


def test_the_train_step_draws_from_the_seed_and_step_only():
  """Two steps from one state and batch draw alike (resume is exact); another step number,
  another draw."""
  config = config_lib.load_config_file("configs/demo.py:tiny=True,method=clip,batch_size=8")
  config.model.overrides.vision.patch_dropout = 0.5
  setup = train.create_train_setup(config, mesh=jax.make_mesh((1,), ("data",)))
  size, context = setup.model_config.vision.image_size, setup.model_config.text.context_length
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, size, size, 3), np.uint8),
           "tokens": rng.integers(1, 100, (8, context), np.int32)}
  state = setup.init(0)

  def loss(step):  # the step donates its state: a copy each time
    return float(setup.step(jax.tree.map(jnp.copy, dict(state, step=jnp.int32(step))),
                            batch)[1]["loss"])

  first = loss(0)
  assert loss(0) == first
  later = loss(1)
  assert later != first
