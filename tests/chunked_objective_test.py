"""The chunked (block-scan) objectives against the plain ones: every registered objective,
loss and gradients w.r.t. x, y and the learnt scalars, full batch at float64 (a ragged
chunk, and an even one for CLOOB) and sharded over 8 virtual devices at float32.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloob_jax import losses
from cloob_jax import objectives
from cloob_jax import parallel
from cloob_jax.objectives import registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parallel_test  # noqa: E402  (the unit-norm embedding pairs)

BETA, INV_TAU, BIAS = 8.0, 14.3, -3.0
ARGNAMES = ("x", "y", "inv_tau", "beta", "bias")


def pair(n, d, seed=0):
  return parallel_test.pair(n, d, seed, dtype=np.float64)


def value_and_grads(loss, method):
  """jit(value_and_grad) of loss(x, y, s, beta, bias) w.r.t. all five (zero where unused)."""
  objective = objectives.get(method)
  has_bias = any(s.name == "bias" for s in objective.extra_scalars)

  def f(x, y, s, beta, bias):
    extra = {"bias": bias} if has_bias else {}
    return loss(x, y, s, beta if objective.needs_beta else None, **extra)

  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def assert_close(got, want, tol, what):
  assert rel(got[0], want[0]) < tol, (what, "loss", float(got[0]), float(want[0]))
  for g, w, name in zip(got[1], want[1], ARGNAMES):
    assert rel(g, w) < tol, (what, name, rel(g, w))


@pytest.mark.parametrize("method", objectives.names())
def test_chunked_matches_plain_in_float64(method):
  n, d = 12, 6
  chunks = (5, 4) if method == "cloob" else (5,)  # 12 = 5 + 5 + 2 (ragged); 12 = 3 x 4
  with jax.enable_x64(True):
    x, y = (jnp.asarray(a, jnp.float64) for a in pair(n, d))
    args = (x, y) + tuple(jnp.float64(v) for v in (INV_TAU, BETA, BIAS))
    want = value_and_grads(losses.get_loss(method), method)(*args)
    assert np.max(np.abs(np.asarray(want[1][0]))) > 0
    for chunk in chunks:
      got = value_and_grads(losses.get_loss(method, chunk), method)(*args)
      assert got[0].dtype == jnp.float64
      assert_close(got, want, 1e-10, (method, chunk))


@pytest.mark.parametrize("method", objectives.names())
def test_chunked_under_the_mesh_matches_the_full_batch_plain_loss(method):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  mesh = parallel.make_mesh(8)
  data = parallel.batch_sharding(mesh)
  x, y = pair(48, 8, seed=1)  # local 6; 48 = 9 x 5 + 3
  scalars = (INV_TAU, BETA, BIAS)
  chunked_fn = value_and_grads(parallel.make_loss_fn(method, mesh, chunk=5), method)
  with jax.enable_x64(True):  # everything, the learnt scalars' gradients included, at 1e-10
    args = tuple(jnp.asarray(a, jnp.float64) for a in (x, y) + scalars)
    want = value_and_grads(losses.get_loss(method), method)(*args)
    got = chunked_fn(jax.device_put(args[0], data), jax.device_put(args[1], data), *args[2:])
    assert got[0].dtype == jnp.float64 and got[1][0].sharding.spec[0] == "data"
    assert_close(got, want, 1e-10, method)
  # float32 against the plain float32 loss: the value and d/dx, d/dy. (d/ds is a sum of
  # cancelling terms: any two f32 summation orders, plain sharded vs plain full batch
  # included, differ by up to ~1e-4 relative there; the float64 check above pins it.)
  args = tuple(np.asarray(a, np.float32) for a in (x, y) + scalars)
  want = value_and_grads(losses.get_loss(method), method)(*args)
  got = chunked_fn(jax.device_put(args[0], data), jax.device_put(args[1], data), *args[2:])
  assert got[0].dtype == jnp.float32
  assert rel(got[0], want[0]) < 1e-5
  for g, w, name in zip(got[1][:2], want[1][:2], ARGNAMES):
    assert rel(g, w) < 1e-5, (method, name, rel(g, w))


def test_chunk_resolution(monkeypatch):
  assert losses.resolve_chunk("cloob", 64) is None  # 'auto' below the threshold: plain
  assert losses.resolve_chunk("cloob", 64, 0) is None
  assert losses.resolve_chunk("cloob", 10**6, None) is None
  assert losses.resolve_chunk("clip", 64, 16) == 16
  big = losses.resolve_chunk("cloob", 1 << 20)
  assert big == (None if losses.CHUNK_MIN_BATCH is None else losses.DEFAULT_CHUNK)
  for bad in (-1, 2.5, True, "8"):
    with pytest.raises(ValueError, match="chunk="):
      losses.resolve_chunk("cloob", 64, bad)

  def row_sum(x, y, x_all, y_all, offset, scalars, gather):  # no `chunk` keyword
    del x_all, y_all, offset, gather
    return jnp.sum(x * y) * scalars["inv_tau"]

  # Registered in a copy of the registry, so that later tests see only the real objectives.
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  monkeypatch.setattr(registry, "_NAMES", list(registry._NAMES))
  name = "toy_unchunked"
  objectives.register(objectives.Objective(name=name, row_sum=row_sum))
  assert not objectives.get(name).takes_chunk and objectives.get("siglip").takes_chunk
  assert losses.resolve_chunk(name, 1 << 20) is None  # 'auto' falls back to plain
  with pytest.raises(ValueError, match="takes no `chunk`"):
    losses.get_loss(name, 4)
