"""Full-batch gradient accumulation (config.accum_steps): the gradient of k micro-batches is the
full batch's, for every objective, plain and chunked, on 1 and 8 devices; training with k = 4
tracks k = 1; k = 1 is today's step, bitwise; bad values are refused in one line.

Tiny towers (the demo's tiny ViT: no BatchNorm, so the gradient is exact) and a global batch of
64, the smallest that k = 8 splits over 8 devices.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import losses
from cloob_jax import models
from cloob_jax import objectives
from cloob_jax import parallel
from cloob_jax import train
from cloob_jax.models import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
RTOL = 1e-5  # float32: relative error of the whole gradient (and of each learnt scalar's)
CHUNK = 24  # candidates per score block: 64 = 2 x 24 + 16, the last block padded


def _demo_config(arg):
  sys.path.insert(0, REPO)
  try:
    from configs import demo
  finally:
    sys.path.pop(0)
  return demo.get_config(arg)


def _config(method, k=1, chunk=None):
  config = _demo_config(f"tiny=True,evals=False,steps=10,batch_size={BATCH},method={method},"
                        f"accum_steps={k}")
  with config.unlocked():
    config.learn_inv_tau = True  # so that 1/tau has a gradient to check
    config.objective_chunk = chunk
  config_lib.check_accum_steps(config)
  return config


def _batch(seed=0, size=32, context=16, n=BATCH):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "tokens": rng.integers(1, 400, (n, context)).astype(np.int32)}


def _grads_as_state():
  """An 'optimizer' whose state after an update is the gradient it was given."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


@functools.lru_cache(maxsize=None)
def _model():
  config = _config("cloob")
  model_config = models.get_config(config.model.name, **config.model.overrides.to_dict())
  return model_config, models.build(model_config)


@functools.lru_cache(maxsize=None)
def _initial_state(method):
  """train.init_state for `method`, compiled once per set of learnt scalars."""
  model_config, model = _model()
  init = functools.partial(train.init_state, model, _grads_as_state(), _config(method),
                           model_config)
  return jax.jit(init)(jax.random.key(0))


def _gradient(method, devices, k, chunk=None):
  """(loss, grads) of one step on `_batch()` at accum_steps=k; the same initial state for all."""
  config = _config(method, k, chunk)
  model_config, model = _model()
  mesh = parallel.make_mesh(devices)
  tx = _grads_as_state()
  state = jax.device_put(_initial_state(method), parallel.replicated_sharding(mesh))
  sharding = parallel.batch_sharding(mesh)
  step = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, schedule=lambda step: 0.0,
      loss_fn=parallel.make_loss_fn(method, mesh, chunk=chunk), config=config,
      batch_sharding=sharding))
  new_state, metrics = step(state, jax.device_put(_batch(), sharding))
  return float(metrics["loss"]), jax.tree.map(np.asarray, new_state["opt_state"])


def _relative_error(grads, reference):
  diff = optax.tree.norm(jax.tree.map(lambda a, b: a - b, grads, reference))
  return float(diff / optax.tree.norm(reference))


_REFERENCES = {}


def _reference(method, devices):
  key = (method, devices)
  if key not in _REFERENCES:
    _REFERENCES[key] = _gradient(method, devices, 1)
  return _REFERENCES[key]


def _check(method, devices, k, chunk=None):
  ref_loss, ref = _reference(method, devices)
  loss, grads = _gradient(method, devices, k, chunk)
  error = _relative_error(grads, ref)
  scalar_errors = {s.param: abs(float(grads[s.param] - ref[s.param])) / abs(float(ref[s.param]))
                   for s in objectives.get(method).scalars}
  print(f"{method} devices={devices} k={k} chunk={chunk}: gradient relative error {error:.2e}, "
        f"scalars {', '.join(f'{n} {e:.1e}' for n, e in scalar_errors.items())}")
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  assert error <= RTOL, error
  for name, scalar_error in scalar_errors.items():
    assert scalar_error <= RTOL, (name, scalar_error)
  return error


def _cases():
  """(method, devices, k, chunk) checked against the full-batch gradient.

  By default a spanning set: CLOOB at every k, plain and chunked, on 8 and 1 devices; every other
  registered objective at one k (cycling 2, 4, 8), plain or chunked in turn (that the chunked
  loss equals the plain one is tests/chunked_objective_test.py's). CLOOB_JAX_ACCUM_GRID=1 runs
  the whole grid: every objective x k in (2, 4, 8) x (8, 1) devices x (plain, chunked).
  """
  if os.environ.get("CLOOB_JAX_ACCUM_GRID"):
    return [(m, d, k, c) for m in objectives.names() for d in (8, 1) for k in (2, 4, 8)
            for c in (None, CHUNK)]
  cases = [("cloob", 8, 2, None), ("cloob", 8, 4, CHUNK), ("cloob", 8, 8, None),
           ("cloob", 1, 2, CHUNK), ("cloob", 1, 8, None)]
  others = [m for m in objectives.names() if m != "cloob"]
  return cases + [(m, 8, (2, 4, 8)[i % 3], (None, CHUNK)[i % 2]) for i, m in enumerate(others)]


@pytest.mark.parametrize("method,devices,k,chunk", _cases())
def test_gradient_equals_the_full_batch_gradient(method, devices, k, chunk):
  _check(method, devices, k, chunk)


def test_every_registered_objective_is_checked():
  assert {case[0] for case in _cases()} == set(objectives.names())


def test_ten_steps_with_k4_track_k1():
  runs = {}
  for k in (1, 4):
    config = _config("cloob", k)
    setup = train.create_train_setup(config)
    state, series = setup.init(0), []
    for i in range(10):
      state, metrics = setup.step(state, jax.device_put(_batch(i), setup.batch_sharding))
      series.append(float(metrics["loss"]))
    runs[k] = np.array(series)
  print("losses k=1", runs[1], "\nmax |k=4 - k=1|", np.max(np.abs(runs[4] - runs[1])))
  assert np.all(np.isfinite(runs[1])) and runs[1][-1] < runs[1][0]
  np.testing.assert_allclose(runs[4], runs[1], rtol=1e-5, atol=1e-5)


def test_patch_dropout_draws_the_same_tokens_in_both_passes():
  """With patch dropout each micro-batch's rng is folded with its index, in the embed pass and
  in the VJP pass alike: the accumulated gradient is the gradient of the loss of those draws
  (and it is not the gradient of other draws, so the dropout does act)."""
  k = 2
  config = _config("cloob", k)
  with config.unlocked():
    config.model.overrides.vision.patch_dropout = 0.5
  model = models.build(models.get_config(config.model.name, **config.model.overrides.to_dict()))
  mesh = parallel.make_mesh(1)
  loss_fn = parallel.make_loss_fn(config.method, mesh)
  tx = _grads_as_state()
  state = jax.device_put(_initial_state("cloob"), jax.devices()[0])
  batch = _batch()
  step = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, schedule=lambda step: 0.0, loss_fn=loss_fn,
      config=config, batch_sharding=parallel.batch_sharding(mesh)))
  grads = step(state, batch)[0]["opt_state"]
  # The train step's dropout key at step 0, folded with the micro-batch index (j, j + k, ...).
  key = jax.random.fold_in(jax.random.key(config.seed), 0)

  def loss_of_draws(params, keys):
    img, txt = zip(*(model.apply({"params": params}, inputs.normalize(batch["image"][j::k]),
                                 batch["tokens"][j::k], train=True, rngs={"dropout": keys[j]})
                     for j in range(k)))
    img, txt = (jnp.stack(a, 1).reshape(BATCH, -1) for a in (img, txt))
    inv_tau = losses.inv_tau_from_log(params["logit_scale"])
    return loss_fn(img, txt, inv_tau, config.beta)

  gradient = jax.jit(jax.grad(loss_of_draws))
  same = _relative_error(grads, gradient(state["params"], [jax.random.fold_in(key, j)
                                                           for j in range(k)]))
  other = _relative_error(grads, gradient(state["params"], [jax.random.fold_in(key, j + k)
                                                            for j in range(k)]))
  print(f"patch dropout k={k}: relative error {same:.2e} (other draws: {other:.2e})")
  assert same <= RTOL and other > 1e-2, (same, other)


def _reference_step(state, batch, *, model, tx, loss_fn, config):
  """The train step as it was before accumulation, written out: one value_and_grad over the
  global batch, AdamW, 1/tau clipped to its range."""
  def compute_loss(params):
    (img, txt), updates = model.apply(models.variables(params, state["batch_stats"]),
                                      inputs.normalize(batch["image"]), batch["tokens"],
                                      train=True, mutable=["batch_stats"])
    inv_tau = losses.inv_tau_from_log(jax.lax.stop_gradient(params["logit_scale"]))
    loss = loss_fn(img, txt, inv_tau, config.beta)
    return loss, (updates["batch_stats"], inv_tau, train.mean_cosine(img),
                  train.mean_cosine(txt))

  (loss, (batch_stats, _, _, _)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, objectives.MAX_LOG_INV_TAU)
  return {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
          "opt_state": opt_state}, loss


def test_k1_is_the_full_batch_step_bitwise_for_a_batchnorm_tower():
  config = _demo_config("steps=3,batch_size=16,evals=False,accum_steps=1")
  assert config.model.name == "ConvNet-tiny" and not config.learn_inv_tau
  with config.unlocked():
    config.model.overrides.vision.image_size = 32
  setup = train.create_train_setup(config)
  reference = jax.jit(functools.partial(
      _reference_step, model=setup.model, tx=setup.tx,
      loss_fn=parallel.make_loss_fn(config.method, setup.mesh), config=config),
      in_shardings=(setup.state_shardings, setup.batch_sharding),
      out_shardings=(setup.state_shardings, parallel.replicated_sharding(setup.mesh)))
  state, expected = setup.init(0), setup.init(0)
  for i in range(2):
    batch = jax.device_put(_batch(i, size=32, context=32, n=16), setup.batch_sharding)
    expected, expected_loss = reference(expected, batch)
    state, metrics = setup.step(state, batch)
    assert float(metrics["loss"]) == float(expected_loss)
  assert state["batch_stats"]
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state),
               jax.tree.map(np.asarray, expected))


@pytest.mark.parametrize("k,batch_size,message", [
    (0, 64, "config.accum_steps=0 must be a positive int (1: no accumulation)"),
    (3, 64, "config.accum_steps=3 does not divide config.batch_size=64"),
    (4, 16, "config.accum_steps=4: micro-batches of 4 rows (config.batch_size=16 / 4) do not "
            "split over the 8 devices"),
])
def test_bad_accum_steps_are_refused_in_one_line(k, batch_size, message):
  config = _demo_config(f"tiny=True,evals=False,batch_size={batch_size},accum_steps={k}")
  with pytest.raises(errors.UserError) as e:
    config_lib.validate(config)
    train.create_train_setup(config)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_an_objective_that_reads_more_than_embeddings_is_refused_with_accumulation(monkeypatch):
  """None of the built-in objectives reads more than the embeddings; one that declares it does
  (embeddings_only=False) trains at k = 1 and is refused at k > 1, in one line."""
  from cloob_jax.objectives import registry  # pylint: disable=g-import-not-at-top
  assert all(objectives.get(name).embeddings_only for name in objectives.names())
  # Registered in a copy of the registry, so that later tests see only the real objectives.
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  monkeypatch.setattr(registry, "_NAMES", list(registry._NAMES))
  objectives.register(objectives.Objective(
      name="toy_reads_activations", row_sum=objectives.get("clip").row_sum,
      embeddings_only=False))
  config = _demo_config(f"tiny=True,evals=False,batch_size={BATCH},accum_steps=1")
  with config.unlocked():
    config.method = "toy_reads_activations"
  config_lib.validate(config)  # k = 1: accepted
  config.accum_steps = 2
  with pytest.raises(errors.UserError) as e:
    config_lib.validate(config)
  assert str(e.value).startswith(
      "config.accum_steps=2: objective 'toy_reads_activations' reads more than the batch's "
      "embeddings") and "\n" not in str(e.value)
