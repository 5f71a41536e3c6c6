"""AdamW with open_clip's weight-decay rule and a warmup + cosine (with restarts) schedule."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cloob_jax import losses


def decay_mask(params):
  """True for weights that get weight decay: matrices, kernels and embeddings (ndim >= 2).

  Norm scales, biases, the class token and the temperature (ndim < 2) are not decayed,
  open_clip's rule.
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def create_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine to 0 (with `restarts`); or constant after warmup.

  The schedule is evaluated at the step of each update before it is counted, so a run of
  `total_steps` updates uses steps 0 .. total_steps - 1. It is jittable (traced `step`) and
  returns float32. W = `warmup_steps`, D = total_steps - W (the steps after warmup).

  Warmup: lr * step / W for step < W (0 at step 0); step W is the first step at `lr`. With
  W >= total_steps the whole run is warmup: the rate rises linearly and never reaches `lr`
  (`config_lib.validate` warns about such configs).

  'cosine', restarts = 0: one cosine over the D steps, lr * (1 + cos(pi * (step - W) / D)) / 2,
  kept exactly as the demo's reported runs used it. It would reach 0 at step total_steps, so
  the last update (total_steps - 1) runs at lr * (1 - cos(pi / D)) / 2 (1.3e-9 for the demo's
  lr 1e-3 and D = 1,400); later steps stay at 0.

  'cosine', restarts = r > 0 (the CC runs of the paper): n = r + 1 cycles. Cycle i
  (i = 0 .. n - 1) covers steps [W + floor(i * D / n), W + floor((i + 1) * D / n)), so cycle
  lengths differ by at most one step when n does not divide D and the cycles tile steps
  W .. total_steps - 1 exactly. Each cycle of L steps starts at `lr` (a restart right after the
  previous cycle's last step) and decays as lr * (1 + cos(pi * k / (L - 1))) / 2 at its k-th
  step, reaching 0 on its last step; in particular the last update of the run is at 0. A
  one-step cycle (only when D < 2n) runs at 0; with D < n there are only D cycles. Steps past
  the end stay at 0.
  """
  lr, warmup = config.lr, config.warmup_steps
  if config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
  restarts = int(config.get("restarts", 0))
  decay_steps = max(total_steps - warmup, 1)

  if restarts <= 0:
    def schedule(step):
      step = jnp.asarray(step, jnp.float32)
      warm = lr * step / max(warmup, 1)
      # step - warmup < decay_steps for every step a run uses: the same values as a mod.
      t = jnp.minimum(step - warmup, decay_steps) / decay_steps
      cosine = 0.5 * lr * (1 + jnp.cos(jnp.pi * t))
      return jnp.where(step < warmup, warm, cosine)

    return schedule

  cycles = min(restarts + 1, decay_steps)
  bounds = [warmup + i * decay_steps // cycles for i in range(cycles + 1)]
  lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
  # A one-step cycle is its own last step: start one step early so that it is at t = 1 (lr 0).
  starts = [float(a - (n == 1)) for a, n in zip(bounds[:-1], lengths)]
  spans = [float(max(n - 1, 1)) for n in lengths]
  later_starts = [float(b) for b in bounds[1:-1]]

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = lr * step / max(warmup, 1)
    index = jnp.sum(step >= jnp.asarray(later_starts, jnp.float32)).astype(jnp.int32)
    start = jnp.asarray(starts, jnp.float32)[index]
    t = jnp.clip((step - start) / jnp.asarray(spans, jnp.float32)[index], 0.0, 1.0)
    cosine = 0.5 * lr * (1 + jnp.cos(jnp.pi * t))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def clip_threshold(config: ml_collections.ConfigDict, method: str, inv_tau: float) -> float:
  """The global-norm clipping threshold of `config.optimizer` in `method`'s loss units.

  With `clip_in_logit_units`, `clip_grad_norm` is one threshold for every method: InfoLOOB and
  CLOOB divide their loss by s = inv_tau (docs/method.md), so their gradients are s times smaller
  and their threshold is `clip_grad_norm / inv_tau`. Otherwise `clip_grad_norm` is used as it
  is. 0 means no clipping. (A learnt s moves during training: `gradient_clipping` then divides
  by the current s at every step.)
  """
  threshold = float(config.get("clip_grad_norm", 0.0))
  if config.get("clip_in_logit_units", False) and method in losses.DIVIDED_BY_INV_TAU:
    threshold /= inv_tau
  return threshold


def clip_by_global_norm_over_inv_tau(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping at `max_norm / s`, s = exp(params['logit_scale']) of this step.

  For a loss divided by a learnt s (InfoLOOB, CLOOB): its gradients shrink and grow with s, so
  a threshold fixed at the initial s would clip too much or too little as s moves. s is
  clipped as the loss clips it (`losses.inv_tau_from_log`). Stateless, like
  optax.clip_by_global_norm, so checkpoints are the same either way.
  """

  def update_fn(updates, state, params=None):
    if params is None or "logit_scale" not in params:
      raise ValueError("clipping in units of a learnt 1/tau needs the params, with "
                       "'logit_scale', passed to update")
    threshold = max_norm / losses.inv_tau_from_log(jax.lax.stop_gradient(params["logit_scale"]))
    norm = optax.tree.norm(updates)
    scale = jnp.where(norm < threshold, 1.0, threshold / norm)
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def gradient_clipping(config: ml_collections.ConfigDict) -> optax.GradientTransformation | None:
  """The gradient clipping of a training config (its optimizer, method and temperature).

  None (no clipping) when `optimizer.clip_grad_norm` is 0; otherwise global-norm clipping at
  `clip_threshold`, which in logit units follows a learnt temperature step by step.
  """
  opt = config.optimizer
  if not opt.get("clip_grad_norm", 0.0):
    return None
  if (opt.get("clip_in_logit_units", False) and config.method in losses.DIVIDED_BY_INV_TAU
      and config.get("learn_inv_tau", False)):
    return clip_by_global_norm_over_inv_tau(float(opt.clip_grad_norm))
  return optax.clip_by_global_norm(clip_threshold(opt, config.method, config.inv_tau))


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                     clipping: optax.GradientTransformation | None):
  """-> (optax.GradientTransformation, schedule): `clipping`, then AdamW on `config`'s schedule.

  `config` is the optimizer config; `clipping` comes from `gradient_clipping` (None: no
  clipping), so that no caller applies `clip_grad_norm` without its units.
  """
  schedule = create_schedule(config, total_steps)
  parts = [] if clipping is None else [clipping]
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
