"""The multi-slice mesh: 8 virtual CPU devices as 2 slices x 4 give the 1-D mesh's losses,
gradients and train step.

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloob_jax import config_lib
from cloob_jax import parallel
from cloob_jax import train


@pytest.fixture(scope='module')
def meshes():
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)')
  return parallel.make_mesh(8), parallel.make_mesh(8, slices=2)


def test_the_hybrid_mesh_is_slices_by_devices_and_the_batch_splits_over_both(meshes):
  flat, hybrid = meshes
  assert hybrid.axis_names == ('dcn', 'data') and hybrid.devices.shape == (2, 4)
  assert list(hybrid.devices.flat) == list(flat.devices.flat)  # slice i: the i-th 4 devices
  assert parallel.batch_axes(hybrid) == ('dcn', 'data') and parallel.batch_axes(flat) == 'data'
  assert parallel.batch_sharding(hybrid).spec == jax.P(('dcn', 'data'))
  assert parallel.local_batch_size(16, hybrid) == 2
  # FSDP splits within a slice: its gathers stay off the slow network.
  assert parallel.fsdp_sharding((64, 512), hybrid).spec == jax.P(None, 'data')
  with pytest.raises(ValueError, match='do not split into 3 slices'):
    parallel.make_mesh(8, slices=3)


@pytest.mark.parametrize('method', ['cloob', 'siglip'])
def test_the_gathered_loss_over_two_slices_equals_the_1d_mesh(meshes, method):
  rng = np.random.default_rng(0)
  x, y = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(2))
  x, y = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, y))
  extra = {'bias': jnp.float32(-3.0)} if method == 'siglip' else {}
  results = []
  for mesh in meshes:
    data = parallel.batch_sharding(mesh)
    fn = jax.jit(jax.value_and_grad(
        lambda a, b, s: parallel.gathered_loss(method, a, b, s, 8.0, mesh, **extra),
        argnums=(0, 1, 2)))
    results.append(fn(jax.device_put(x, data), jax.device_put(y, data), jnp.float32(14.3)))
  (value, grads), (want, want_grads) = results[1], results[0]
  assert value == want
  for got, ref in zip(grads, want_grads):
    np.testing.assert_array_equal(got, ref)


def test_the_train_step_over_two_slices_equals_the_1d_mesh(meshes):
  config = config_lib.load_config_file("configs/demo.py:tiny=True,method=cloob,batch_size=16")
  config.fsdp = True
  rng = np.random.default_rng(0)
  out = []
  for mesh in meshes:
    setup = train.create_train_setup(config, mesh=mesh)
    mc = setup.model_config
    size, context = mc.vision.image_size, mc.text.context_length
    batch = {"image": rng.integers(0, 256, (16, size, size, 3), np.uint8),
             "tokens": rng.integers(1, 100, (16, context), np.int32)}
    rng = np.random.default_rng(0)  # the same batch for the next mesh
    state, metrics = setup.step(setup.init(0), jax.device_put(batch, setup.batch_sharding))
    out.append((float(metrics["loss"]), jax.device_get(state["params"])))
  (loss, params), (want, want_params) = out[1], out[0]
  assert loss == want
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params,
               want_params)


def test_the_evaluators_embed_over_both_axes_of_a_two_slice_mesh(meshes):
  """The evaluators' batches split over ('dcn', 'data'): the batch rounds up to a multiple of
  all 8 devices (not of one slice's 4), and the embeddings equal the 1-D mesh's."""
  from cloob_jax import evaluators  # pylint: disable=g-import-not-at-top
  from cloob_jax import models  # pylint: disable=g-import-not-at-top
  module = models.create_model('ViT-tiny')
  variables = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                                   np.zeros((1, 77), np.int32))
  images = np.random.default_rng(0).integers(0, 256, (13, 32, 32, 3), dtype=np.uint8)
  embedded = []
  for mesh in meshes:
    embedder = evaluators.Embedder(module, batch_size=3, mesh=mesh, progress=False)
    assert embedder.batch_size == 8
    embedded.append(embedder.embed_images(variables, images))
  np.testing.assert_allclose(embedded[1], embedded[0], rtol=1e-5, atol=1e-6)
