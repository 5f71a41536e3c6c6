"""The Hopfield retrieval's statistics (objectives/diagnostics.py): known values on a toy
memory, the same value sharded as on one device, and the train step logging them for the
objectives with a retrieval only."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloob_jax import config_lib
from cloob_jax import objectives
from cloob_jax import parallel
from cloob_jax import train
from cloob_jax.objectives import diagnostics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(rng, n, d):
  a = rng.standard_normal((n, d)).astype(np.float32)
  return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("beta", [0.0, 1.0, 3.0, 30.0])
def test_an_orthonormal_memory_gives_the_closed_form_values(beta):
  # Memory and queries are the same N orthonormal vectors: query i scores beta on pattern i and
  # 0 on the others, so p_ii = e^b / (e^b + N - 1) and p_ij = 1 / (e^b + N - 1).
  n = 8
  eye = jnp.eye(n, dtype=jnp.float32)
  stats = diagnostics.retrieval_stats(eye, eye, beta)
  z = math.exp(beta) + n - 1
  p_own, p_other = math.exp(beta) / z, 1 / z
  entropy = -p_own * math.log(p_own) - (n - 1) * p_other * math.log(p_other)
  norm = math.sqrt(p_own**2 + (n - 1) * p_other**2)  # the retrieval is p_i itself, normalised
  want = {"patterns": math.exp(entropy), "cos_query": p_own / norm,
          "cos_mean": 1 / (norm * math.sqrt(n))}
  for memory in diagnostics.MEMORIES:
    for name, value in want.items():
      assert float(stats[f"hopfield/{memory}/{name}"]) == pytest.approx(value, rel=1e-5), name
  if beta == 0.0:  # the uniform average: all N patterns, the batch mean
    assert want["patterns"] == pytest.approx(n) and want["cos_mean"] == pytest.approx(1)


def test_a_sharp_retrieval_returns_the_query_and_a_flat_one_the_mean():
  x, y = _unit(np.random.default_rng(0), 32, 64), _unit(np.random.default_rng(1), 32, 64)
  sharp, flat = (diagnostics.retrieval_stats(x, y, beta) for beta in (1e4, 1e-4))
  for memory in diagnostics.MEMORIES:
    assert float(flat[f"hopfield/{memory}/patterns"]) == pytest.approx(32, rel=1e-3)
    assert float(flat[f"hopfield/{memory}/cos_mean"]) == pytest.approx(1, abs=1e-4)
  # At a large beta every query retrieves one pattern, its nearest. Half the queries (x against
  # the image memory, y against the text memory) find themselves: cosine 1; the other half a
  # random unit vector's nearest neighbour in 64-d, well below 1.
  for memory in diagnostics.MEMORIES:
    assert 1 <= float(sharp[f"hopfield/{memory}/patterns"]) < 1.01
    assert 0.5 < float(sharp[f"hopfield/{memory}/cos_query"]) < 0.9


@pytest.mark.parametrize("devices,chunk", [(4, None), (8, None), (8, 24)])
def test_sharded_statistics_equal_the_full_batch_ones(devices, chunk):
  x, y = _unit(np.random.default_rng(2), 64, 32), _unit(np.random.default_rng(3), 64, 32)
  want = diagnostics.retrieval_stats(x, y, 8.0)
  mesh = parallel.make_mesh(devices)
  sharding = parallel.batch_sharding(mesh)
  got = jax.jit(parallel.make_retrieval_stats_fn("cloob", mesh, chunk=chunk))(
      jax.device_put(x, sharding), jax.device_put(y, sharding), 8.0)
  assert sorted(got) == sorted(diagnostics.metric_names())
  for key, value in want.items():
    np.testing.assert_allclose(float(got[key]), float(value), rtol=2e-6, err_msg=key)


@pytest.mark.parametrize("chunk", [1, 24, 64, 100])
@pytest.mark.parametrize("beta", [0.0, 8.0, 1e3])
def test_chunked_statistics_equal_the_plain_ones(chunk, beta):
  # [2b, C] blocks with an online softmax (ragged last block: 64 = 2 x 24 + 16; C > N too).
  x, y = _unit(np.random.default_rng(4), 64, 16), _unit(np.random.default_rng(5), 64, 16)
  want = diagnostics.retrieval_stats(x, y, beta)
  got = jax.jit(functools.partial(diagnostics.retrieval_stats, chunk=chunk))(x, y, beta)
  for key, value in want.items():
    np.testing.assert_allclose(float(got[key]), float(value), rtol=1e-5, atol=1e-6,
                               err_msg=key)


@pytest.mark.parametrize("method", objectives.names())
def test_the_train_step_logs_them_for_objectives_with_a_retrieval(method):
  # Traced, not compiled: the metrics the jitted step returns, at k = 1 and k = 2.
  for k in (1, 2):
    config = config_lib.load_config_file(os.path.join(REPO, "configs", "demo.py"), tiny=True,
                                         evals=False, batch_size=16, method=method,
                                         accum_steps=k)
    setup = train.create_train_setup(config)
    state = jax.eval_shape(setup.init, 0)
    batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.uint8),
             "tokens": jax.ShapeDtypeStruct((16, 16), jnp.int32)}
    _, metrics = jax.eval_shape(setup.step, state, batch)
    logged = set(metrics) & set(diagnostics.metric_names())
    if objectives.get(method).needs_beta:
      assert logged == set(diagnostics.metric_names()), (method, sorted(metrics))
    else:
      assert not logged, (method, sorted(metrics))
