"""The train step and the main binary: equivalence across devices and processes, exact resume,
preemption, the non-finite guard, config refusal and the weight-decay mask.

Runs of the binary use `configs/demo.py:tiny=True` (same code paths, seconds per run) and share
one persistent compilation cache (tests/conftest.py), so each program compiles once.
"""

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cloob_jax import checkpoint
from cloob_jax import config_lib
from cloob_jax import losses
from cloob_jax import models
from cloob_jax import optim
from cloob_jax import parallel
from cloob_jax import train
from cloob_jax import workdir
from cloob_jax.models import inputs
from cloob_jax.objectives import diagnostics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
BATCH = 16
CONFIG = f"configs/demo.py:tiny=True,evals=False,steps={STEPS},batch_size={BATCH}"
FLAGS = ["--config.log_every=1", "--config.checkpoint_every=4"]


def _demo_config(arg=f"tiny=True,evals=False,steps={STEPS},batch_size={BATCH}"):
  sys.path.insert(0, REPO)
  try:
    from configs import demo
  finally:
    sys.path.pop(0)
  return demo.get_config(arg)


def _env(devices: int | None):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _main(workdir, *extra, devices=8, wait=True):
  cmd = [sys.executable, "-m", "cloob_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         *FLAGS, *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


def _series(workdir, key="loss"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r[key] for r in rows if key in r}


def _last_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(line)["step"] for line in f if line.strip()]
  return max(steps, default=0)


def _wait_for_step(workdir, step, proc, timeout=300):
  deadline = time.time() + timeout
  while _last_step(workdir) < step:
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() < deadline, f"no step {step} within {timeout}s"
    time.sleep(0.05)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted run on 8 devices: the reference for resume and device equivalence."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  code, out = _main(workdir)
  assert code == 0, out
  return workdir


def test_demo_run_writes_the_workdir_contract(reference_run):
  assert os.path.exists(os.path.join(reference_run, "config.json"))
  with open(os.path.join(reference_run, "metrics.jsonl")) as f:
    row = json.loads(f.readline())
  for key in ("step", "loss", "learning_rate", "examples_per_sec", "inv_tau",
              "data_wait_fraction", "skipped/corrupt", "image_mean_cosine", "text_mean_cosine"):
    assert key in row
  assert -1 <= row["image_mean_cosine"] <= 1 and -1 <= row["text_mean_cosine"] <= 1
  # CLOOB's Hopfield retrieval, described (objectives/diagnostics.py; tests/diagnostics_test.py)
  for key in diagnostics.metric_names():
    low, high = (1, BATCH) if key.endswith("/patterns") else (-1, 1)
    assert low - 1e-4 <= row[key] <= high + 1e-4, (key, row[key])
  assert os.listdir(os.path.join(reference_run, "tensorboard"))
  assert checkpoint.Checkpointer(os.path.join(reference_run, "checkpoints"), every=1,
                                 keep=1).latest_step() == STEPS
  loss = _series(reference_run)
  assert np.mean([loss[s] for s in range(STEPS - 4, STEPS + 1)]) < np.mean(
      [loss[s] for s in range(1, 6)])


def test_one_device_and_two_processes_match_eight_devices(reference_run, tmp_path):
  one = str(tmp_path / "one")
  code, out = _main(one, devices=1)
  assert code == 0, out
  two = str(tmp_path / "two_processes")
  env = _env(None)
  env["PORT"] = str(20000 + random.randrange(20000))
  env["PYTHON"] = sys.executable  # this interpreter, whatever `python` is on PATH
  proc = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "2", f"--config={CONFIG}",
                         f"--workdir={two}", *FLAGS], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  ref = _series(reference_run)
  for other in (_series(one), _series(two)):
    assert sorted(other) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
      assert abs(other[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, other[step], ref[step])
  # The batch's mean cosine is a sum over the whole (sharded) global batch.
  for key in ("image_mean_cosine", "text_mean_cosine"):
    ref = _series(reference_run, key)
    for other in (_series(one, key), _series(two, key)):
      assert sorted(other) == sorted(ref) and all(
          abs(other[s] - ref[s]) <= 1e-4 for s in ref), (key, other, ref)


def test_the_step_follows_the_meshs_platform_not_the_default_backend(monkeypatch):
  # The scan and remat defaults come from the devices the step is built on
  # (parallel.platform(mesh)); a TPU mesh on a CPU host gets the TPU program. With real TPU
  # devices (libtpu's abstract topology) tests/compile_test.py checks the same.
  from cloob_jax.models import layers
  monkeypatch.setattr(layers, "SCAN_MIN_WIDTH", 1)  # the tiny towers scan by default on CPU
  config = _demo_config()
  for tower in ("vision", "text"):  # two blocks: one scanned, the last pooled outside the scan
    config.model.overrides[tower].layers = 2
  mesh = parallel.make_mesh(1)
  assert parallel.platform(mesh) == "cpu"

  def step_text():
    setup = train.create_train_setup(config, mesh)
    state = jax.eval_shape(setup.init, 0)
    size, context = 32, 16
    batch = {"image": jax.ShapeDtypeStruct((BATCH, size, size, 3), jnp.uint8),
             "tokens": jax.ShapeDtypeStruct((BATCH, context), jnp.int32)}
    return setup.step.lower(state, batch).as_text()

  assert "stablehlo.while" in step_text()
  monkeypatch.setattr(parallel, "platform", lambda mesh: "tpu")
  assert "stablehlo.while" not in step_text()
  assert jax.default_backend() == "cpu"


def test_mean_cosine_is_the_mean_over_distinct_pairs():
  x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  gram = x @ x.T
  assert float(train.mean_cosine(jnp.asarray(x))) == pytest.approx(
      gram[~np.eye(12, dtype=bool)].mean(), abs=1e-6)
  assert float(train.mean_cosine(jnp.ones((4, 3)) / np.sqrt(3))) == pytest.approx(1.0)


def test_fsdp_shards_parameters_and_matches_replicated_training(reference_run, tmp_path):
  config = _demo_config()
  model_config = models.get_config(config.model.name, **config.model.overrides.to_dict())
  model = models.build(model_config)
  tx, _ = optim.create_optimizer(config.optimizer, config.total_steps,
                                 optim.gradient_clipping(config))
  abstract = jax.eval_shape(functools.partial(train.init_state, model, tx, config, model_config),
                            jax.random.key(0))
  shardings = parallel.state_shardings(abstract, parallel.make_mesh(), fsdp=True)
  embedding = shardings["params"]["text"]["token_embedding"]["embedding"]
  assert embedding.spec == jax.P("data", None)  # 49408 rows split over 8 devices
  assert shardings["params"]["logit_scale"].spec == jax.P()
  workdir = str(tmp_path / "fsdp")
  code, out = _main(workdir, "--config.fsdp=True")
  assert code == 0, out
  ref, fsdp = _series(reference_run), _series(workdir)
  for step in range(1, STEPS + 1):
    assert abs(fsdp[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, fsdp[step], ref[step])


def _assert_same_variables(expected_workdir, workdir):
  """The latest checkpoints of two workdirs hold the same variables, bitwise."""
  _, expected = checkpoint.restore_variables(expected_workdir)
  _, got = checkpoint.restore_variables(workdir)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_sigterm_saves_and_sigkill_resumes_bitwise(reference_run, tmp_path):
  workdir = str(tmp_path / "interrupted")
  proc = _main(workdir, wait=False)
  _wait_for_step(workdir, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "SIGTERM: saved the checkpoint of step" in out
  saved = int(out.split("saved the checkpoint of step ")[1].split(";")[0])
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=1,
                                 keep=1).latest_step() == saved

  proc = _main(workdir, wait=False)  # resumes, then dies without warning at a random step
  _wait_for_step(workdir, saved + random.randint(2, 8), proc)
  proc.kill()
  proc.wait()
  code, out = _main(workdir)
  assert code == 0, out
  assert "Resumed from the checkpoint of step" in out

  _assert_same_variables(reference_run, workdir)


def test_sigkill_during_accumulation_resumes_bitwise(tmp_path):
  """accum_steps=2: a checkpoint holds whole optimizer steps only, so a run SIGKILLed at a
  random point (almost surely inside a step's micro-batches) resumes to the uninterrupted
  run's parameters, bitwise; the data position counts global batches."""
  accum = ["--config.accum_steps=2"]
  reference = str(tmp_path / "reference")
  code, out = _main(reference, *accum)
  assert code == 0, out
  assert "in 2 micro-batches of 8" in out, out  # the progress line names the micro-batches

  workdir = str(tmp_path / "killed")
  proc = _main(workdir, *accum, wait=False)
  # From step 9 on the checkpoint of step 4 is on disk (saves are asynchronous, and the save
  # of step 8 waits for it).
  _wait_for_step(workdir, random.randint(9, 15), proc)
  proc.kill()
  proc.wait()
  code, out = _main(workdir, *accum)
  assert code == 0, out
  assert "Resumed from the checkpoint of step" in out

  _assert_same_variables(reference, workdir)


def test_restore_variables_on_another_topology(reference_run, tmp_path):
  """A workdir saved from 8 devices restores whole in a process with 1 device (and 3)."""
  _, expected = checkpoint.restore_variables(reference_run)
  for devices in (1, 3):
    out = str(tmp_path / f"restored{devices}.npz")
    code = ("import numpy as np, jax; from cloob_jax import checkpoint; "
            f"_, v = checkpoint.restore_variables({reference_run!r}); "
            "flat = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(v)}; "
            f"np.savez({out!r}, **flat); print(len(jax.devices()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(devices),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[-1] == str(devices)
    restored = np.load(out)
    for key, value in jax.tree_util.tree_leaves_with_path(expected):
      np.testing.assert_array_equal(restored[jax.tree_util.keystr(key)], value)


def _process(i, workdir, port):
  """Process i of a 2-process run with one CPU device each (launch/local_multiprocess.sh 2 1).

  One device per process: with two each, a gloo step on this machine takes ~6 s (the
  processes wait on each other's receives), against ~0.3 s with one.
  """
  cmd = [sys.executable, "-m", "cloob_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         *FLAGS, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", "--num_cpu_devices=1"]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(None), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir, port, before_wait=None, timeout=300):
  """Runs a 2-process run to its end (`before_wait(procs)` first); -> their outputs, each
  process having exited 0. Both are killed if anything fails on the way."""
  procs = [_process(i, workdir, port) for i in range(2)]
  try:
    if before_wait is not None:
      before_wait(procs)
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
    assert "Traceback" not in out, out  # e.g. an exit-time hook that fails on Python 3.12
  return outs


def test_sigterm_to_one_process_stops_all_at_the_same_step(reference_run, tmp_path):
  # On a pod the signal reaches one host, or reaches the hosts at different steps. Every process
  # must save the same step and exit; one that stopped alone would leave the others blocked in
  # the next step's collectives.
  workdir = str(tmp_path / "one_signalled")
  port = 20000 + random.randrange(20000)

  def signal_process_1_after_step_3(procs):
    _wait_for_step(workdir, 3, procs[0])
    procs[1].send_signal(signal.SIGTERM)

  outs = _two_processes(workdir, port, signal_process_1_after_step_3, timeout=180)
  assert "SIGTERM: saved the checkpoint of step" in outs[1]
  assert "A stop signal to another process: saved the checkpoint of step" in outs[0]
  saved = {int(out.split("saved the checkpoint of step ")[1].split(";")[0]) for out in outs}
  assert len(saved) == 1, outs
  saved = saved.pop()
  assert 3 < saved < STEPS
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=1,
                                 keep=1).latest_step() == saved
  # Resumed to the end, the run is the uninterrupted one's (to float tolerance: 2 processes).
  _two_processes(workdir, port + 1)
  ref, resumed = _series(reference_run), _series(workdir)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    assert abs(resumed[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, resumed[step])


def test_non_finite_loss_stops_and_never_checkpoints_non_finite(tmp_path):
  workdir = str(tmp_path / "diverges")
  code, out = _main(workdir, "--config.optimizer.lr=1e30", "--config.optimizer.clip_grad_norm=0",
                    "--config.checkpoint_every=1")
  assert code != 0
  assert "NonFiniteError" in out and ("loss is nan" in out or "non-finite" in out), out[-2000:]
  steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=1,
                                  keep=1)._manager.all_steps()
  for step in steps:
    _, variables = checkpoint.restore_variables(workdir, step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_bad_config_keys_are_refused_before_anything_runs(tmp_path):
  code, out = _main(str(tmp_path / "typo"), "--config.totl_steps=3")
  assert code != 0 and "totl_steps" in out and "total_steps" in out
  assert not os.path.exists(tmp_path / "typo" / "config.json")
  with pytest.raises(KeyError, match="did you mean 'method'"):
    _demo_config("metod=clip")
  config = _demo_config()
  config.method = "cloop"
  with pytest.raises(ValueError, match="did you mean 'cloob'"):
    config_lib.validate(config)
  config = _demo_config()
  config.model.overrides.text.layer = 2
  with pytest.raises(ValueError, match="Did you mean 'layers'"):
    config_lib.validate(config)
  config = _demo_config()
  config.data.caption_mention.shape = 2.0
  with pytest.raises(ValueError, match="caption_mention: .*shape=2.0 is not a probability"):
    config_lib.validate(config)
  config = _demo_config()
  config.data.family_size = 3
  with pytest.raises(ValueError, match=r"batch_size \(16\) is not divisible by "
                                       r"config.data.family_size \(3\)"):
    config_lib.validate(config)
  config.data.family_size, config.data.source = 4, "records"
  with pytest.raises(ValueError, match="family_size=4 needs config.data.source='synthetic'"):
    config_lib.validate(config)
  config.data.family_size = 0
  with pytest.raises(ValueError, match="config.data.family_size must be a positive integer, "
                                       "got 0"):
    config_lib.validate(config)


def test_resuming_under_a_changed_config_keeps_the_old_config_and_names_the_change(
    tmp_path, capsys):
  config = _demo_config()
  workdir.write_config(config, str(tmp_path))
  workdir.write_config(config, str(tmp_path))  # an unchanged resume: nothing kept, no warning
  assert sorted(os.listdir(tmp_path)) == ["config.json"] and "WARNING" not in capsys.readouterr().out
  for steps in (9, 12):
    config.total_steps = steps
    workdir.write_config(config, str(tmp_path))
  out = capsys.readouterr().out
  assert f"total_steps: {STEPS} -> 9" in out and "total_steps: 9 -> 12" in out
  assert str(tmp_path / "config.2.json") in out
  read = lambda name: json.loads((tmp_path / name).read_text())["total_steps"]
  assert [read("config.1.json"), read("config.2.json"), read("config.json")] == [STEPS, 9, 12]


def test_caption_mention_reaches_the_training_source():
  config = _demo_config()
  config.data.caption_mention.colour = 0.0
  config_lib.validate(config)
  source = train.create_source(config, image_size=32)
  # Every attribute's odds come from the config: the override and the demo's own choices.
  assert source.mention == config.data.caption_mention.to_dict()
  assert source.mention["colour"] == 0.0 and source.mention["shape"] == 1.0


def test_weight_decay_mask_follows_open_clip():
  model = models.create_model("ViT-tiny")
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                          jnp.zeros((1, 77), jnp.int32))
  mask = optim.decay_mask(shapes["params"])
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = {k for k, m in flat.items() if m}
  assert "['visual']['conv1']['kernel']" in decayed
  assert "['text']['token_embedding']['embedding']" in decayed
  assert "['text']['transformer']['resblocks_0']['attn']['in_proj']['kernel']" in decayed
  assert "['visual']['positional_embedding']" in decayed
  for key in ("['logit_scale']", "['visual']['class_embedding']",
              "['visual']['ln_pre']['scale']", "['text']['ln_final']['bias']",
              "['text']['transformer']['resblocks_0']['mlp']['c_fc']['bias']"):
    assert not flat[key], key


def test_clipping_threshold_is_in_logit_units_after_overrides():
  # The demo config's method is CLOOB; `--config.method` and `--config.inv_tau` overrides are
  # applied after the config file, and the threshold must follow them.
  config = _demo_config()
  assert config.method == "cloob" and config.inv_tau == 30.0
  threshold = lambda: optim.clip_threshold(config.optimizer, config.method, config.inv_tau)
  for method, expected in (("clip", 1.0), ("hopfield_infonce", 1.0), ("infoloob", 1 / 30),
                           ("cloob", 1 / 30)):
    config_lib.apply_override(config, f"method={method}")
    assert threshold() == pytest.approx(expected), method
  config_lib.apply_override(config, "inv_tau=10.0")
  assert threshold() == pytest.approx(0.1)
  config_lib.apply_override(config, "optimizer.clip_in_logit_units=False")
  assert threshold() == 1.0
  # The optimizer clips at the threshold it is given: with a huge Adam eps the first update is
  # -lr * g / eps, linear in the (clipped) gradient.
  opt = ml_collections.ConfigDict(dict(
      lr=1.0, b1=0.9, b2=0.98, eps=1e6, weight_decay=0.0, warmup_steps=0,
      schedule="constant", restarts=0, clip_grad_norm=1.0))
  grads = {"w": jnp.full((4,), 5.0)}  # global norm 10
  norms = []
  for clip in (optax.clip_by_global_norm(1.0), optax.clip_by_global_norm(0.1), None):
    tx, _ = optim.create_optimizer(opt, 10, clip)
    update, _ = tx.update(grads, tx.init(grads), grads)
    norms.append(float(optax.tree.norm(update)) * 1e6)
  assert norms == pytest.approx([1.0, 0.1, 10.0], rel=1e-3)  # clipped at 1.0, 0.1, unclipped


def _first_update_norm(config, log_inv_tau):
  """Norm of the first update for gradients of global norm 10, with a huge Adam eps
  (the update is then -lr * g / eps, linear in the clipped gradient), times eps."""
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=1.0, b1=0.9, b2=0.98, eps=1e6, weight_decay=0.0, warmup_steps=0,
      schedule="constant", restarts=0, clip_grad_norm=1.0, clip_in_logit_units=True))
  tx, _ = optim.create_optimizer(config.optimizer, 10,
                                 optim.gradient_clipping(config))
  params = {"w": jnp.zeros((4,)), "logit_scale": jnp.asarray(log_inv_tau, jnp.float32)}
  grads = {"w": jnp.full((4,), 5.0), "logit_scale": jnp.asarray(0.0)}
  update, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return float(optax.tree.norm(update)) * 1e6


def test_clipping_in_logit_units_follows_a_learnt_temperature():
  # Fixed 1/tau = 30: the threshold is 1/30 whatever the parameter holds (it is not learnt).
  config = _demo_config()
  assert config.method == "cloob" and not config.learn_inv_tau
  assert _first_update_norm(config, np.log(5.0)) == pytest.approx(1 / 30, rel=1e-3)
  # Learnt: the loss is divided by the current s, so the threshold is 1 / s of this step.
  config_lib.apply_override(config, "learn_inv_tau=True")
  for s in (5.0, 30.0, 80.0):
    assert _first_update_norm(config, np.log(s)) == pytest.approx(1 / s, rel=1e-3), s
  # s is clipped to [1, 100] as in the loss; CLIP's loss is not divided by s.
  assert _first_update_norm(config, np.log(1000.0)) == pytest.approx(1 / 100, rel=1e-3)
  config_lib.apply_override(config, "method=clip")
  assert _first_update_norm(config, np.log(30.0)) == pytest.approx(1.0, rel=1e-3)
  config_lib.apply_override(config, "optimizer.clip_grad_norm=0.0")
  assert optim.gradient_clipping(config) is None


def test_cloob_step_loss_equals_losses_cloob_on_the_global_batch():
  config = _demo_config()
  model_config = models.get_config(config.model.name, **config.model.overrides.to_dict())
  model = models.build(model_config)
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  tx, schedule = optim.create_optimizer(
      config.optimizer, config.total_steps,
      optim.gradient_clipping(config))
  state = jax.jit(functools.partial(train.init_state, model, tx, config, model_config))(
      jax.random.key(0))
  batch = next(train.create_train_iterator(config, model_config))
  batch.pop("skipped")
  global_batch = jax.device_put(batch, parallel.batch_sharding(mesh))
  params = state["params"]
  img, txt = jax.jit(functools.partial(model.apply, train=True))(
      {"params": params}, inputs.normalize(batch["image"]), batch["tokens"])
  expected = losses.cloob(img, txt, config.inv_tau, config.beta)
  step = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, schedule=schedule,
      loss_fn=parallel.make_loss_fn(config.method, mesh), config=config))
  _, metrics = step(state, global_batch)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_demo_with_in_training_evals_then_eval_binary_on_the_workdir(tmp_path):
  workdir = str(tmp_path / "with_evals")
  cmd = [sys.executable, "-m", "cloob_jax.main",
         "--config=configs/demo.py:tiny=True,evals=True,steps=4,batch_size=16",
         f"--workdir={workdir}", "--config.log_every=2"]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  # The run ends with one table of every eval, then the paths it wrote.
  table = proc.stdout[proc.stdout.index("## Evaluation at step 4"):]
  for row in ("| colour |", "| heldout_combination |", "| retrieval |", "| embedding_analysis |"):
    assert row in table, table
  assert "image_effective_eigenvalues" in table and "Wrote " in table, table
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = {k: v for r in rows for k, v in r.items() if "/" in k and not k.startswith("skipped")}
  for key in ("colour/top1", "shape/top1", "retrieval/image_to_text_recall@1",
              "embedding_analysis/image_effective_eigenvalues"):
    assert any(k.startswith(key.split("/")[0]) for k in evals), (key, sorted(evals))
  output = str(tmp_path / "eval.json")
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.eval",
       "--config=configs/eval/synthetic.py:n=16,retrieval_n=16,probe_n=32,progress=False",
       f"--workdir={workdir}", f"--output={output}"],
      cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with open(output) as f:
    results = json.load(f)
  assert {"colour", "shape", "position", "count", "retrieval"} <= set(results)
  assert 0.0 <= results["colour"]["top1"] <= 1.0
  assert os.path.exists(output[:-len(".json")] + ".md")


@pytest.mark.parametrize("name", ["ConvNet-tiny", "RN-tiny"])
def test_demo_batchnorm_towers_train_the_same_on_1_and_8_devices(name):
  """The demo's own tower (ConvNet-tiny) and the tiny ModifiedResNet, both with BatchNorm over
  the global batch, not the tests' tiny ViT: three CLOOB steps give the same losses and batch
  statistics on 1 and 8 devices."""
  config = _demo_config("steps=3,batch_size=16,evals=False")
  assert config.model.name == "ConvNet-tiny"
  with config.unlocked():
    config.model.name = name
    config.model.overrides.vision.image_size = 32
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
              "tokens": rng.integers(1, 400, (16, 32)).astype(np.int32)} for _ in range(3)]
  runs = []
  for devices in (1, 8):
    setup = train.create_train_setup(config, mesh=parallel.make_mesh(devices))
    state, losses_ = setup.init(0), []
    for batch in batches:
      state, metrics = setup.step(state, jax.device_put(batch, setup.batch_sharding))
      losses_.append(float(metrics["loss"]))
    runs.append((losses_, jax.tree.map(np.asarray, state["batch_stats"])))
  assert all(np.isfinite(runs[0][0])) and runs[0][1]
  np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               runs[0][1], runs[1][1])
