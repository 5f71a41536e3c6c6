"""The objective registry, SigLIP and Hopfield-SigLIP: float64 per-element references,
finite-difference gradients, 1 vs 8 devices, a toy objective registered from the test, and
the train step's learnt bias."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from cloob_jax import losses
from cloob_jax import objectives
from cloob_jax import optim
from cloob_jax import parallel
from cloob_jax.objectives import registry
from cloob_jax.objectives import terms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import losses_test  # noqa: E402  (the float64 retrieval reference)


def pair(n, d=8, seed=0):
  rng = np.random.default_rng(seed + 1000 * n)
  x = rng.normal(size=(n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y = x + 0.7 * rng.normal(size=(n, d)) / math.sqrt(d)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  return x.astype(np.float32), y.astype(np.float32)


# ---- float64 references: per element, explicit sums, no code shared with the package.


def dot(a, b):
  return math.fsum(float(u) * float(v) for u, v in zip(a, b))


def log_sigmoid(t):
  return -math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))


def ref_siglip(a, b, s, bias):
  n = len(a)
  return -math.fsum(log_sigmoid((1 if i == j else -1) * (s * dot(a[i], b[j]) + bias))
                    for i in range(n) for j in range(n)) / n


def ref_retrieve(q, m, beta):
  return np.asarray(losses_test.ref_retrieve(q, m, beta))  # renormalised, as CLOOB's


def ref_hopfield_siglip(x, y, s, beta, bias):
  ux, uy = ref_retrieve(x, x, beta), ref_retrieve(y, x, beta)
  vx, vy = ref_retrieve(x, y, beta), ref_retrieve(y, y, beta)
  return (ref_siglip(ux, uy, s, bias) + ref_siglip(vy, vx, s, bias)) / 2


@pytest.mark.parametrize("n,s,bias", [(2, 10.0, -10.0), (7, 10.0, -10.0), (9, 30.0, -3.0),
                                      (6, 1.0, 0.0)])
def test_siglip_matches_the_per_element_reference(n, s, bias):
  x, y = pair(n)
  want = ref_siglip(x.astype(np.float64), y.astype(np.float64), s, bias)
  np.testing.assert_allclose(losses.siglip(x, y, s, bias), want, rtol=1e-5)
  with jax.enable_x64(True):
    got = losses.siglip(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), s, bias)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref_siglip(x.astype(np.float64), y.astype(np.float64),
                                               s, bias), rtol=1e-12)


@pytest.mark.parametrize("n,s,beta,bias", [(5, 10.0, 8.0, -10.0), (8, 30.0, 14.3, -2.0)])
def test_hopfield_siglip_matches_the_per_element_reference(n, s, beta, bias):
  x, y = pair(n)
  with jax.enable_x64(True):
    got = losses.hopfield_siglip(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64),
                                 s, beta, bias)
    want = ref_hopfield_siglip(x.astype(np.float64), y.astype(np.float64), s, beta, bias)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_siglip_is_stable_where_a_naive_sigmoid_is_not():
  x, _ = pair(6)
  value = losses.siglip(x, x, 100.0, -10.0)  # positives at +90, negatives far below
  assert np.isfinite(value) and value >= 0


@pytest.mark.parametrize("method", ["siglip", "hopfield_siglip"])
def test_gradients_match_finite_differences(method):
  x, y = pair(5, d=4, seed=3)
  with jax.enable_x64(True):
    fn = jax.jit(lambda a, b, s, beta, bias: losses.get_loss(method)(a, b, s, beta, bias=bias))
    args = (jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), jnp.float64(14.3),
            jnp.float64(8.0), jnp.float64(-4.0))
    jax.test_util.check_grads(fn, args, order=1, modes=("rev",), eps=1e-6, atol=1e-6,
                              rtol=1e-6)


@pytest.mark.parametrize("method", ["siglip", "hopfield_siglip"])
def test_eight_devices_give_the_single_device_value_and_gradients(method):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  mesh = parallel.make_mesh(8)
  x, y = pair(32, 16, seed=8)
  args = (jnp.float32(10.0), jnp.float32(8.0), jnp.float32(-6.0))

  def sharded(a, b, s, beta, bias):
    return parallel.gathered_loss(method, a, b, s, beta, mesh, bias=bias)

  def single(a, b, s, beta, bias):
    return losses.get_loss(method)(a, b, s, beta, bias=bias)

  data = parallel.batch_sharding(mesh)
  got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 4)))(
      jax.device_put(x, data), jax.device_put(y, data), *args)
  want = jax.jit(jax.value_and_grad(single, argnums=(0, 1, 2, 4)))(x, y, *args)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


def test_the_declarations_drive_the_tables():
  assert objectives.names() == ("cloob", "clip", "infoloob", "hopfield_infonce", "siglip",
                                "hopfield_siglip")
  assert losses.DIVIDED_BY_INV_TAU == {"cloob", "infoloob"}
  assert objectives.get("infonce") is objectives.get("clip")
  assert [s.param for s in objectives.get("siglip").scalars] == ["logit_scale", "logit_bias"]
  assert objectives.get("hopfield_siglip").needs_beta
  with pytest.raises(ValueError, match="needs its learnt 'bias'"):
    losses.get_loss("siglip")(*pair(4), 10.0)


def test_a_toy_objective_registered_here_works_full_batch_sharded_and_in_config():
  # One definition, no edit elsewhere: a cosine-margin loss on the diagonal.
  def row_sum(x, y, x_all, y_all, offset, scalars, gather):
    del x_all, gather
    rows = offset + jnp.arange(x.shape[0])
    return jnp.sum(1.0 - scalars["inv_tau"] * jnp.sum(x * y_all[rows], axis=1) / 100)

  name = "toy_diagonal"
  if name not in objectives.names():
    objectives.register(objectives.Objective(name=name, row_sum=row_sum))
  x, y = pair(8)
  want = np.mean(1.0 - 10.0 * np.sum(x * y, axis=1) / 100)
  np.testing.assert_allclose(losses.get_loss(name)(x, y, 10.0), want, rtol=1e-6)
  if jax.device_count() >= 4:
    mesh = parallel.make_mesh(4)
    data = parallel.batch_sharding(mesh)
    np.testing.assert_allclose(parallel.gathered_loss(
        name, jax.device_put(x, data), jax.device_put(y, data), 10.0, None, mesh), want,
        rtol=1e-6)
  sys.path.insert(0, ".")
  try:
    from configs import demo
  finally:
    sys.path.pop(0)
  from cloob_jax import config_lib
  config = demo.get_config("tiny=True")
  config.method = name
  config_lib.validate(config)  # known to the config check without an edit there
  assert name not in losses.DIVIDED_BY_INV_TAU
  assert optim.clip_threshold(config.optimizer, name, config.inv_tau) is not None


def test_train_step_learns_siglips_bias():
  from cloob_jax import train
  sys.path.insert(0, ".")
  try:
    from configs import demo
  finally:
    sys.path.pop(0)
  config = demo.get_config("tiny=True,evals=False,batch_size=16,steps=4")
  config.method, config.inv_tau = "siglip", 10.0
  setup = train.create_train_setup(config, mesh=parallel.make_mesh(1))
  state = setup.init(0)
  assert float(state["params"]["logit_bias"]) == -10.0
  assert float(state["params"]["logit_scale"]) == pytest.approx(math.log(10.0))
  data = train.create_train_iterator(config, setup.model_config)
  losses_seen = []
  for _ in range(3):
    batch = next(data)
    batch.pop("skipped")
    state, metrics = setup.step(state, jax.device_put(batch, setup.batch_sharding))
    losses_seen.append(float(metrics["loss"]))
  assert all(np.isfinite(losses_seen))
  assert float(metrics["bias"]) == float(state["params"]["logit_bias"]) != -10.0
  assert float(metrics["inv_tau"]) > 0


def test_terms_sigmoid_rows_sums_blocks_to_the_full_batch():
  x, y = pair(12)
  full = terms.sigmoid_rows(x, y, 0, 10.0, -5.0)
  blocks = sum(terms.sigmoid_rows(x[i:i + 4], y, i, 10.0, -5.0) for i in range(0, 12, 4))
  np.testing.assert_allclose(blocks, full, rtol=1e-6)
  assert registry.MAX_LOG_INV_TAU == losses.MAX_LOG_INV_TAU
