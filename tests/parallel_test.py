"""Tests for cloob_jax.parallel: the gathered loss on 1, 2, 4 and 8 (virtual CPU) devices.

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it for the
suite); with fewer devices the larger meshes are skipped.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloob_jax import losses
from cloob_jax import parallel

METHODS = ['clip', 'infoloob', 'cloob', 'hopfield_infonce']
AxisType = jax.sharding.AxisType


def needs_devices(n):
  if jax.device_count() < n:
    pytest.skip(f'needs {n} devices, have {jax.device_count()} '
                '(set XLA_FLAGS=--xla_force_host_platform_device_count=8)')


def pair(n, d, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y = x + 0.7 * rng.normal(size=(n, d)) / np.sqrt(d)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  return x.astype(dtype), y.astype(dtype)


@functools.cache
def single_device_value_and_grad(method):
  """Jitted once per method: the reference for every mesh size (compiles are the slow part)."""
  return jax.jit(jax.value_and_grad(losses.get_loss(method), argnums=(0, 1, 2, 3)))


def rel_diff(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_make_mesh():
  needs_devices(2)
  mesh = parallel.make_mesh(2)
  assert mesh.axis_names == ('data',) and mesh.shape['data'] == 2
  assert mesh.axis_types == (AxisType.Auto,)
  assert parallel.make_mesh().shape['data'] == jax.device_count()
  explicit = parallel.make_mesh(1, axis_name='batch', axis_type=AxisType.Explicit)
  assert explicit.axis_names == ('batch',) and explicit.axis_types == (AxisType.Explicit,)
  with pytest.raises(ValueError, match='num_devices'):
    parallel.make_mesh(jax.device_count() + 1)
  assert parallel.local_batch_size(64, mesh) == 32


@pytest.mark.parametrize('num_devices', [1, 2, 4, 8])
@pytest.mark.parametrize('method', METHODS)
def test_gathered_loss_value_and_gradients_match_single_device(method, num_devices):
  needs_devices(num_devices)
  mesh = parallel.make_mesh(num_devices)
  x, y = pair(32, 16, seed=num_devices)
  inv_tau, beta = jnp.float32(30.0), jnp.float32(8.0)
  argnums = (0, 1, 2, 3)

  sharded = jax.jit(jax.value_and_grad(
      lambda a, b, s, t: parallel.gathered_loss(method, a, b, s, t, mesh), argnums=argnums))
  single = single_device_value_and_grad(method)
  data = parallel.batch_sharding(mesh)
  value, grads = sharded(jax.device_put(x, data), jax.device_put(y, data), inv_tau, beta)
  want_value, want_grads = single(x, y, inv_tau, beta)

  assert value.shape == () and value.dtype == jnp.float32
  assert rel_diff(value, want_value) <= 1e-5
  assert grads[0].sharding.spec[0] == 'data'  # Gradients stay sharded like the batch.
  for name, got, want in zip(('x', 'y', 'inv_tau', 'beta'), grads, want_grads):
    if name == 'beta' and method in ('clip', 'infoloob'):
      assert float(got) == 0.0
      continue
    assert rel_diff(got, want) <= 1e-5, name


@pytest.mark.parametrize('method', METHODS)
def test_gathered_loss_on_explicit_axes_with_set_mesh(method):
  needs_devices(4)
  mesh = parallel.make_mesh(4, axis_type=AxisType.Explicit)
  x, y = pair(16, 8, seed=1)
  loss_fn = parallel.make_loss_fn(method)  # Picks the mesh up from jax.set_mesh.
  with jax.set_mesh(mesh):
    data = parallel.batch_sharding(mesh)
    xs, ys = jax.device_put(x, data), jax.device_put(y, data)
    value, gx = jax.jit(jax.value_and_grad(lambda a: loss_fn(a, ys, 14.3, 8.0)))(xs)
  want, want_gx = jax.value_and_grad(lambda a: losses.get_loss(method)(a, y, 14.3, 8.0))(x)
  assert rel_diff(value, want) <= 1e-5
  assert rel_diff(gx, want_gx) <= 1e-5


def test_make_loss_fn_without_a_mesh_is_the_full_batch_loss():
  x, y = pair(8, 8)
  loss_fn = parallel.make_loss_fn('cloob')
  assert loss_fn(x, y, 30.0, 8.0) == losses.cloob(x, y, 30.0, 8.0)
  with pytest.raises(ValueError, match='Unknown'):
    parallel.make_loss_fn('cloop')


def test_unsharded_and_low_precision_inputs():
  needs_devices(8)
  mesh = parallel.make_mesh(8)
  x, y = pair(16, 32, seed=2)
  # Host arrays (not yet on the mesh) on a 2-D Explicit mesh: the loss reshards them itself.
  mesh_2d = jax.make_mesh((4, 2), ('data', 'model'), axis_types=(AxisType.Explicit,) * 2)
  got = jax.jit(lambda a, b: parallel.gathered_loss('cloob', a, b, 30.0, 8.0, mesh_2d))(x, y)
  assert rel_diff(got, losses.cloob(x, y, 30.0, 8.0)) <= 1e-5
  xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
  got = jax.jit(lambda a, b: parallel.gathered_loss('infoloob', a, b, 30.0, None, mesh))(xb, yb)
  assert got.dtype == jnp.float32
  assert rel_diff(got, losses.infoloob(xb, yb, 30.0)) <= 1e-5


def test_rejects_indivisible_batch_and_tiny_global_batch():
  needs_devices(4)
  mesh = parallel.make_mesh(4)
  x, y = pair(6, 8)
  with pytest.raises(ValueError, match='not divisible'):
    parallel.gathered_loss('clip', x, y, 14.3, None, mesh)
  one = parallel.make_mesh(1)
  with pytest.raises(ValueError, match='at least 2'):
    parallel.gathered_loss('infoloob', x[:1], y[:1], 14.3, None, one)


def test_no_device_materialises_the_global_score_matrix():
  # Per device the largest arrays are [local, global]; [global, global] must not appear.
  needs_devices(8)
  mesh = parallel.make_mesh(8)
  n, d = 256, 8
  data = parallel.batch_sharding(mesh)
  x = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=data)
  fn = jax.jit(jax.value_and_grad(
      lambda a, b: parallel.gathered_loss('cloob', a, b, 30.0, 8.0, mesh), argnums=(0, 1)))
  hlo = fn.lower(x, x).compile().as_text()
  shapes = {tuple(map(int, m.split(','))) for m in re.findall(r'f32\[(\d+,\d+)\]', hlo)}
  assert (n // 8, n) in shapes
  assert max(a * b for a, b in shapes) == (n // 8) * n


def test_large_global_batch_on_8_devices():
  needs_devices(8)
  mesh = parallel.make_mesh(8)
  n, d = 4096, 32
  x, y = pair(n, d, seed=3)
  data = parallel.batch_sharding(mesh)
  fn = jax.jit(jax.value_and_grad(
      lambda a, b: parallel.gathered_loss('cloob', a, b, 30.0, 8.0, mesh), argnums=(0, 1)))
  value, (gx, gy) = fn(jax.device_put(x, data), jax.device_put(y, data))
  assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
  want = jax.jit(lambda a, b: losses.cloob(a, b, 30.0, 8.0))(x, y)
  assert rel_diff(value, want) <= 1e-5
