"""The learning-rate schedule (`optim.create_schedule`) and validate's warm-up warning.

A run of total_steps updates evaluates the schedule at steps 0 .. total_steps - 1 (train_step
reads it at state['step'] before the step is counted). No model, no training: seconds.
"""

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cloob_jax import config_lib
from cloob_jax import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 1e-3


def _optimizer(warmup, restarts=0, schedule="cosine", lr=LR):
  return ml_collections.ConfigDict(dict(lr=lr, warmup_steps=warmup, schedule=schedule,
                                        restarts=restarts))


def _values(config, total_steps, steps=None):
  """The schedule at `steps` (default 0 .. total_steps - 1), traced under jit."""
  steps = jnp.arange(total_steps) if steps is None else jnp.asarray(steps)
  values = jax.jit(jax.vmap(optim.create_schedule(config, total_steps)))(steps)
  assert values.dtype == jnp.float32
  return np.asarray(values)


def _cycle_bounds(total_steps, warmup, restarts):
  """The documented rule: cycle i covers [W + floor(i D / n), W + floor((i + 1) D / n))."""
  decay, n = total_steps - warmup, restarts + 1
  return [warmup + i * decay // n for i in range(n + 1)]


def test_warmup_is_linear_from_zero_to_lr():
  values = _values(_optimizer(warmup=100), 1000)
  assert values[0] == 0.0
  np.testing.assert_allclose(values[:100], LR * np.arange(100) / 100, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(values[100], LR, rtol=1e-6)
  assert np.all(np.diff(values[:101]) > 0)


def test_constant_schedule_holds_lr_after_warmup():
  values = _values(_optimizer(warmup=10, schedule="constant"), 50)
  assert values[0] == 0.0
  np.testing.assert_allclose(values[:10], LR * np.arange(10) / 10, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(values[10:], LR, rtol=1e-6)
  np.testing.assert_allclose(_values(_optimizer(warmup=0, schedule="constant"), 5), LR,
                             rtol=1e-6)


def _old_restarts0(lr, warmup, total_steps, steps):
  """The restarts=0 schedule every reported demo run used (before restarts were fixed), jitted
  as training jits it."""
  cycle = max(total_steps - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    t = jnp.mod(step - warmup, cycle) / cycle
    return jnp.where(step < warmup, lr * step / max(warmup, 1),
                     0.5 * lr * (1 + jnp.cos(jnp.pi * t)))

  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))


def test_restarts0_is_one_cosine_unchanged_for_the_demo():
  demo = config_lib.load_config_file(os.path.join(REPO, "configs/demo.py"), evals=False)
  total, opt = demo.total_steps, demo.optimizer
  assert (total, opt.warmup_steps, opt.restarts, opt.schedule) == (750, 75, 0, "cosine")
  values = _values(opt, total)
  # Bit for bit the values of the runs the README reports.
  np.testing.assert_array_equal(values, _old_restarts0(opt.lr, 75, total, np.arange(total)))
  assert np.all(np.diff(values[75:]) < 0)
  # One cosine over D = 675 steps: the last update (step 749) is at lr (1 - cos(pi / D)) / 2.
  np.testing.assert_allclose(values[-1], 0.5 * opt.lr * (1 - np.cos(np.pi / 675)),
                             rtol=0.02)  # float32 rounding near cos = -1
  assert values[-1] < 1e-8
  np.testing.assert_allclose(values[75 + 225], 0.75 * opt.lr, rtol=1e-5)  # a third: cos 60°
  # Past the end it stays at 0 (no wrap back to lr).
  assert _values(opt, total, [total, total + 10]).max() < 1e-12


@pytest.mark.parametrize("total,warmup,restarts", [
    (1000, 100, 1), (1000, 100, 2), (1001, 100, 1), (1002, 100, 2), (1000, 0, 2),
    (97, 10, 3), (12, 2, 4)])
def test_every_cycle_starts_at_lr_and_ends_at_zero(total, warmup, restarts):
  values = _values(_optimizer(warmup, restarts), total)
  bounds = _cycle_bounds(total, warmup, restarts)
  assert bounds[-1] == total
  lengths = np.diff(bounds)
  assert lengths.max() - lengths.min() <= 1
  for start, end in zip(bounds[:-1], bounds[1:]):
    cycle = values[start:end]
    np.testing.assert_allclose(cycle[0], LR, rtol=1e-6)  # a restart at the peak
    assert abs(cycle[-1]) < 1e-10 * LR  # ~0 on the cycle's last step
    assert np.all(np.diff(cycle) < 0)
    # The cosine between: lr (1 + cos(pi k / (L - 1))) / 2.
    k = np.arange(end - start)
    np.testing.assert_allclose(cycle, 0.5 * LR * (1 + np.cos(np.pi * k / (end - start - 1))),
                               rtol=1e-4, atol=1e-9)
  assert abs(values[-1]) < 1e-10 * LR


def test_restart_boundaries_pinned():
  values = _values(_optimizer(warmup=100, restarts=1), 1000)
  assert values[549] == 0.0 and values[999] == 0.0
  np.testing.assert_allclose(values[[100, 550]], LR, rtol=1e-6)
  values = _values(_optimizer(warmup=100, restarts=2), 1001)  # D = 901: cycles 300, 300, 301
  assert _cycle_bounds(1001, 100, 2) == [100, 400, 700, 1001]
  np.testing.assert_allclose(values[[100, 400, 700]], LR, rtol=1e-6)
  assert np.abs(values[[399, 699, 1000]]).max() < 1e-10 * LR


@pytest.mark.parametrize("total,warmup", [(1500, 100), (1001, 100), (999, 7), (10, 0), (5, 4)])
@pytest.mark.parametrize("restarts", [1, 2, 3, 5])
def test_last_update_is_at_zero(total, warmup, restarts):
  value = _values(_optimizer(warmup, restarts), total, [total - 1])[0]
  assert np.isfinite(value) and abs(value) < 1e-10 * LR
  # Past the end it stays at 0.
  assert np.abs(_values(_optimizer(warmup, restarts), total, [total, total + 3])).max() < 1e-10


def test_cc3m_ends_each_cycle_at_zero():
  cc3m = config_lib.load_config_file(os.path.join(REPO, "configs/cc3m.py"))
  total, opt = cc3m.total_steps, cc3m.optimizer
  assert total == 31 * 2_800_000 // 512 and opt.warmup_steps == 10_000 and opt.restarts == 1
  bounds = _cycle_bounds(total, opt.warmup_steps, opt.restarts)
  assert bounds == [10_000, 89_765, 169_531]
  steps = [0, 5_000, 9_999, 10_000, 49_882, 89_764, 89_765, total - 2, total - 1]
  values = _values(opt, total, steps)
  np.testing.assert_allclose(values[:4], opt.lr * np.array([0, 0.5, 0.9999, 1]), rtol=1e-5)
  np.testing.assert_allclose(values[4], opt.lr / 2, rtol=1e-3)
  assert values[5] < 1e-10 * opt.lr and values[-1] < 1e-10 * opt.lr  # each cycle's last step
  np.testing.assert_allclose(values[6], opt.lr, rtol=1e-6)  # the restart
  assert 0 <= values[7] < 1e-8 * opt.lr  # (rounds to 0 in float32)


@pytest.mark.parametrize("restarts", [0, 1])
@pytest.mark.parametrize("warmup", [100, 150])
def test_warmup_longer_than_the_run_warms_up_throughout(warmup, restarts):
  values = _values(_optimizer(warmup, restarts), 100)
  assert np.all(np.isfinite(values)) and values[0] == 0.0
  assert np.all(np.diff(values) > 0)
  np.testing.assert_allclose(values, LR * np.arange(100) / warmup, rtol=1e-6, atol=1e-12)


def test_validate_warns_about_warmup_longer_than_the_run(caplog, capsys):
  config = config_lib.load_config_file(os.path.join(REPO, "configs/demo.py"))
  config_lib.validate(config)  # the demo as it is: no warning
  assert "WARNING" not in capsys.readouterr().out
  config.total_steps = 75  # e.g. --config.total_steps=75: the demo's whole run is warm-up
  with caplog.at_level(logging.WARNING):
    config_lib.validate(config)
  out = capsys.readouterr().out
  lines = [line for line in out.splitlines() if line.startswith("WARNING: ")]
  assert len(lines) == 1, out
  for text in (lines[0], caplog.text):
    assert "config.optimizer.warmup_steps (75)" in text and "config.total_steps (75)" in text
