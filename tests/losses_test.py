"""Tests for cloob_jax.losses against plain float64 numpy references (docs/method.md formulas)."""

import math

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from cloob_jax import losses


def unit_rows(rng, n, d, dtype=np.float32):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def pair(n, d=8, seed=0):
  """Correlated (x, y) pairs, as after some training: y_i is a noisy copy of x_i."""
  rng = np.random.default_rng(seed + 1000 * n)
  x = unit_rows(rng, n, d, np.float64)
  y = x + 0.7 * unit_rows(rng, n, d, np.float64)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  return x.astype(np.float32), y.astype(np.float32)


# ---- float64 references: per element, explicit sums over j, no shared code with losses.py.


def dot(a, b):
  return math.fsum(float(u) * float(v) for u, v in zip(a, b))


def log_sum_exp(values):
  top = max(values)
  return top + math.log(math.fsum(math.exp(v - top) for v in values))


def ref_loob(a, b, s):
  n = len(a)
  terms = [-s * dot(a[i], b[i]) + log_sum_exp([s * dot(a[i], b[j]) for j in range(n) if j != i])
           for i in range(n)]
  return math.fsum(terms) / n


def ref_ce(a, b, s):
  n = len(a)
  terms = [-s * dot(a[i], b[i]) + log_sum_exp([s * dot(a[i], b[j]) for j in range(n)])
           for i in range(n)]
  return math.fsum(terms) / n


def ref_retrieve(q, m, beta):
  out = []
  for qi in q:
    scores = [beta * dot(qi, mj) for mj in m]
    top = max(scores)
    w = [math.exp(v - top) for v in scores]
    r = [math.fsum(w[j] * m[j][k] for j in range(len(m))) / math.fsum(w) for k in range(len(qi))]
    norm = math.sqrt(math.fsum(v * v for v in r))
    out.append([v / norm for v in r])
  return out


def ref_retrievals(x, y, beta):
  return (ref_retrieve(x, x, beta), ref_retrieve(y, x, beta),
          ref_retrieve(x, y, beta), ref_retrieve(y, y, beta))


_RETRIEVALS = {}  # The slow part of the reference, shared by the inv_tau cases.


def ref_loss(method, x, y, s, beta):
  if method == 'infonce':
    return (ref_ce(x, y, s) + ref_ce(y, x, s)) / 2
  if method == 'infoloob':
    return (ref_loob(x, y, s) + ref_loob(y, x, s)) / s
  key = (x.tobytes(), y.tobytes(), beta)
  if key not in _RETRIEVALS:
    _RETRIEVALS[key] = ref_retrievals(x, y, beta)
  ux, uy, vx, vy = _RETRIEVALS[key]
  if method == 'cloob':
    return (ref_loob(ux, uy, s) + ref_loob(vy, vx, s)) / s
  return (ref_ce(ux, uy, s) + ref_ce(vy, vx, s)) / 2


def call(method, x, y, s, beta):
  fn = getattr(losses, method)
  return fn(x, y, s, beta) if method in ('cloob', 'hopfield_infonce') else fn(x, y, s)


# ---- values


INV_TAUS = [1.0, 14.3, 30.0, 100.0]
SIZES = [2, 3, 17, 64]


@pytest.mark.parametrize('inv_tau', INV_TAUS)
@pytest.mark.parametrize('n', SIZES)
@pytest.mark.parametrize('method', ['infonce', 'infoloob'])
def test_plain_losses_match_reference(method, n, inv_tau):
  x, y = pair(n)
  got = call(method, x, y, inv_tau, None)
  assert got.shape == () and got.dtype == jnp.float32
  want = ref_loss(method, x.astype(np.float64), y.astype(np.float64), inv_tau, None)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, inv_tau) / inv_tau)


@pytest.mark.parametrize('beta', [8.0, 14.3])
@pytest.mark.parametrize('inv_tau', INV_TAUS)
@pytest.mark.parametrize('n', SIZES)
@pytest.mark.parametrize('method', ['cloob', 'hopfield_infonce'])
def test_hopfield_losses_match_reference(method, n, inv_tau, beta):
  x, y = pair(n)
  got = call(method, x, y, inv_tau, beta)
  assert got.shape == () and got.dtype == jnp.float32
  want = ref_loss(method, x.astype(np.float64), y.astype(np.float64), inv_tau, beta)
  np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-5)


def test_float64_matches_reference_tightly():
  x, y = pair(9, seed=5)
  with jax.enable_x64(True):
    for method in ('infonce', 'infoloob', 'cloob', 'hopfield_infonce'):
      got = call(method, jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), 30.0, 8.0)
      assert got.dtype == jnp.float64
      want = ref_loss(method, x.astype(np.float64), y.astype(np.float64), 30.0, 8.0)
      np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=method)


def test_loob_helper_and_registry():
  x, y = pair(6)
  np.testing.assert_allclose(losses.loob(x, y, 14.3),
                             ref_loob(x.astype(np.float64), y.astype(np.float64), 14.3), rtol=1e-5)
  assert losses.get_loss('clip')(x, y, 14.3, 8.0) == losses.infonce(x, y, 14.3)
  assert losses.get_loss('infonce')(x, y, 14.3) == losses.infonce(x, y, 14.3)
  assert losses.get_loss('infoloob')(x, y, 14.3, None) == losses.infoloob(x, y, 14.3)
  assert losses.get_loss('cloob')(x, y, 14.3, 8.0) == losses.cloob(x, y, 14.3, 8.0)
  assert (losses.get_loss('hopfield_infonce')(x, y, 14.3, 8.0)
          == losses.hopfield_infonce(x, y, 14.3, 8.0))
  with pytest.raises(ValueError, match='Unknown contrastive loss'):
    losses.get_loss('siglipp')
  with pytest.raises(ValueError, match='beta'):
    losses.get_loss('cloob')(x, y, 14.3)


def test_row_blocks_sum_to_the_full_batch_loss():
  # The sharded loss rests on this: blocks of anchor rows, offsets into the candidates.
  x, y = pair(12)
  full = losses.loob_rows(x, y, 0, 30.0)
  blocks = sum(losses.loob_rows(x[i:i + 4], y, i, 30.0) for i in range(0, 12, 4))
  np.testing.assert_allclose(blocks, full, rtol=1e-6)
  np.testing.assert_allclose(full / 12, losses.loob(x, y, 30.0), rtol=1e-6)
  blocks = sum(losses.ce_rows(x[i:i + 3], y, i, 30.0) for i in range(0, 12, 3))
  np.testing.assert_allclose(blocks, losses.ce_rows(x, y, 0, 30.0), rtol=1e-6)


# ---- the leave-one-out mask


def test_positive_is_exactly_left_out():
  rng = np.random.default_rng(0)
  a, b = unit_rows(rng, 8, 16), unit_rows(rng, 8, 16)
  s, i = 100.0, 3
  negatives_only = losses.loob_rows(a[i:i + 1], b, i, s) + s * np.dot(a[i], b[i])
  for scale in (0.0, -5.0, 20.0):  # Positive logit from 0 to ~2000 (a -1000 mask would leak).
    b2 = b.copy()
    b2[i] = scale * a[i]
    got = losses.loob_rows(a[i:i + 1], b2, i, s) + s * np.dot(a[i], b2[i])
    np.testing.assert_allclose(got, negatives_only, rtol=1e-6)
  # ... and it gets no gradient through the logsumexp either.
  lse = lambda c: losses.loob_rows(a[i:i + 1], c, i, s) + s * jnp.dot(a[i], c[i])
  grad = jax.grad(lse)(jnp.asarray(b))
  np.testing.assert_array_equal(grad[i], 0.0)


def test_stable_with_near_identical_embeddings_at_inv_tau_100():
  rng = np.random.default_rng(0)
  base = unit_rows(rng, 1, 32)
  x = base + 1e-4 * rng.normal(size=(16, 32)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  for method in ('infonce', 'infoloob', 'cloob', 'hopfield_infonce'):
    fn = jax.jit(jax.value_and_grad(
        lambda a, b, s, m=method: losses.get_loss(m)(a, b, s, 14.3), argnums=(0, 1, 2)))
    for y in (x, np.tile(base, (16, 1))):
      value, grads = fn(x, y, jnp.float32(100.0))
      assert np.isfinite(value), method
      assert all(np.all(np.isfinite(g)) for g in grads), method
  # All rows identical: every logit equals s, so loob = log(n - 1) per term.
  same = np.tile(base, (16, 1))
  np.testing.assert_allclose(losses.infoloob(same, same, 100.0), 2 * math.log(15) / 100, rtol=1e-5)


def test_batch_of_one():
  x, y = pair(1)
  with pytest.raises(ValueError, match='at least 2'):
    losses.infoloob(x, y, 14.3)
  with pytest.raises(ValueError, match='at least 2'):
    losses.cloob(x, y, 14.3, 8.0)
  # InfoNCE is defined (and zero) for a single pair: the positive is the only candidate.
  np.testing.assert_allclose(losses.infonce(x, y, 14.3), 0.0, atol=1e-6)


def test_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='same shape'):
    losses.infonce(np.ones((4, 3), np.float32), np.ones((5, 3), np.float32), 1.0)


# ---- gradients, invariances, dtypes


@pytest.mark.parametrize('method', ['infonce', 'infoloob', 'cloob', 'hopfield_infonce'])
def test_gradients_match_finite_differences(method):
  x, y = pair(5, d=4, seed=3)
  with jax.enable_x64(True):
    args = (jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), jnp.float64(14.3),
            jnp.float64(8.0))
    fn = jax.jit(losses.get_loss(method))
    jax.test_util.check_grads(fn, args, order=1, modes=('rev',), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_gradient_wrt_traced_inv_tau_under_jit():
  x, y = pair(8)
  log_scale = jnp.log(jnp.float32(30.0))  # Learnable temperature is stored as a log.
  fn = jax.jit(jax.grad(lambda t: losses.cloob(x, y, jnp.exp(t), 8.0)))
  g = fn(log_scale)
  h = 1e-3
  numeric = (losses.cloob(x, y, math.exp(log_scale + h), 8.0)
             - losses.cloob(x, y, math.exp(log_scale - h), 8.0)) / (2 * h)
  np.testing.assert_allclose(g, numeric, rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize('method', ['infonce', 'infoloob', 'cloob', 'hopfield_infonce'])
def test_invariant_to_a_shared_permutation(method):
  x, y = pair(17)
  perm = np.random.default_rng(0).permutation(17)
  np.testing.assert_allclose(call(method, x[perm], y[perm], 30.0, 8.0),
                             call(method, x, y, 30.0, 8.0), rtol=1e-5)


@pytest.mark.parametrize('method', ['infonce', 'infoloob', 'cloob', 'hopfield_infonce'])
def test_low_precision_inputs_are_computed_in_float32(method):
  x, y = pair(16, d=32)
  # float16 takes the same path as bfloat16; one method is enough for it.
  dtypes = (jnp.bfloat16, jnp.float16) if method == 'cloob' else (jnp.bfloat16,)
  for dtype in dtypes:
    x16, y16 = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    got = call(method, x16, y16, 30.0, 8.0)
    assert got.dtype == jnp.float32
    want = call(method, x16.astype(jnp.float32), y16.astype(jnp.float32), 30.0, 8.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, call(method, x, y, 30.0, 8.0), rtol=3e-2)
  # Gradients reach the bf16 inputs in their own dtype.
  g = jax.jit(jax.grad(lambda a, b: call(method, a, b, 30.0, 8.0)))(
      jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
  assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_large_batch_is_finite():
  n, d = 4096, 32
  x, y = pair(n, d=d)
  fn = jax.jit(jax.value_and_grad(lambda a, b: losses.cloob(a, b, 30.0, 8.0), argnums=(0, 1)))
  value, (gx, gy) = fn(x, y)
  assert np.isfinite(value)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
  # Correlated pairs: far better than chance (InfoLOOB of random pairs ~ log(n-1)/s * 2).
  assert float(value) < 2 * math.log(n - 1) / 30.0
