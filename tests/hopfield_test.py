"""Tests for cloob_jax.hopfield.retrieve against a plain float64 numpy reference."""

import math

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from cloob_jax import hopfield


def unit_rows(rng, n, d, dtype=np.float32):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def retrieve_reference(state, stored, beta):
  """R(S, M) row by row in float64: explicit sums, no matrix algebra."""
  state, stored = np.asarray(state, np.float64), np.asarray(stored, np.float64)
  out = np.zeros_like(state)
  for i in range(state.shape[0]):
    scores = [beta * sum(state[i, k] * stored[j, k] for k in range(state.shape[1]))
              for j in range(stored.shape[0])]
    top = max(scores)
    weights = [math.exp(v - top) for v in scores]
    total = sum(weights)
    for j, w in enumerate(weights):
      out[i] += (w / total) * stored[j]
    out[i] /= math.sqrt(sum(v * v for v in out[i]))
  return out


@pytest.mark.parametrize('beta', [8.0, 14.3])
@pytest.mark.parametrize('n', [2, 3, 17, 64])
def test_retrieve_matches_reference(n, beta):
  rng = np.random.default_rng(n)
  state, stored = unit_rows(rng, n, 8), unit_rows(rng, n + 3, 8)
  got = hopfield.retrieve(state, stored, beta)
  assert got.shape == (n, 8) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, retrieve_reference(state, stored, beta), rtol=2e-5, atol=2e-6)


def test_retrieve_rows_are_unit_norm_and_beta_limits():
  rng = np.random.default_rng(0)
  state, stored = unit_rows(rng, 5, 16), unit_rows(rng, 7, 16)
  got = hopfield.retrieve(state, stored, 14.3)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
  # beta -> 0: the normalised mean of all stored patterns, the same for every query.
  mean = stored.mean(0) / np.linalg.norm(stored.mean(0))
  np.testing.assert_allclose(hopfield.retrieve(state, stored, 0.0), np.tile(mean, (5, 1)),
                             rtol=1e-5, atol=1e-6)
  # Large beta with the memory containing the queries: retrieval returns each query.
  np.testing.assert_allclose(hopfield.retrieve(stored, stored, 1000.0), stored, atol=1e-5)


def test_retrieve_traced_beta_and_jit():
  rng = np.random.default_rng(1)
  state, stored = unit_rows(rng, 4, 8), unit_rows(rng, 6, 8)
  got = jax.jit(hopfield.retrieve)(state, stored, jnp.float32(8.0))
  np.testing.assert_allclose(got, hopfield.retrieve(state, stored, 8.0), rtol=1e-5, atol=1e-7)


def test_retrieve_low_precision_is_computed_in_float32():
  rng = np.random.default_rng(2)
  state, stored = unit_rows(rng, 6, 32), unit_rows(rng, 9, 32)
  for dtype in (jnp.bfloat16, jnp.float16):
    s16, m16 = jnp.asarray(state, dtype), jnp.asarray(stored, dtype)
    got = hopfield.retrieve(s16, m16, 14.3)
    assert got.dtype == jnp.float32
    # Same as float32 on the rounded inputs: nothing after the cast runs in 16 bits.
    want = hopfield.retrieve(s16.astype(jnp.float32), m16.astype(jnp.float32), 14.3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, hopfield.retrieve(state, stored, 14.3), atol=5e-2)


def test_retrieve_gradients_flow_through_state_stored_and_beta():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    state = jnp.asarray(unit_rows(rng, 4, 5, np.float64))
    stored = jnp.asarray(unit_rows(rng, 6, 5, np.float64))
    jax.test_util.check_grads(hopfield.retrieve, (state, stored, jnp.float64(8.0)), order=1,
                              modes=('fwd', 'rev'), eps=1e-6, atol=1e-6, rtol=1e-6)
    weights = jnp.asarray(rng.normal(size=(4, 5)))
    g_stored = jax.grad(lambda m: jnp.sum(weights * hopfield.retrieve(state, m, 8.0)))(stored)
    assert float(jnp.max(jnp.abs(g_stored))) > 1e-3


def test_retrieve_rejects_bad_shapes():
  with pytest.raises(ValueError, match='state'):
    hopfield.retrieve(jnp.ones((3, 4)), jnp.ones((3, 5)), 8.0)
