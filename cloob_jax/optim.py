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
  """Linear warmup from 0 to `lr`, then cosine to 0 over the rest (split into `restarts` + 1
  equal cycles when restarts > 0, as in the CC runs of the paper); or constant after warmup."""
  lr, warmup = config.lr, config.warmup_steps
  if config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
  cycles = config.get("restarts", 0) + 1
  decay_steps = max(total_steps - warmup, 1)
  cycle = max(decay_steps // cycles, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = lr * step / max(warmup, 1)
    t = jnp.mod(step - warmup, cycle) / cycle
    cosine = 0.5 * lr * (1 + jnp.cos(jnp.pi * t))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def clip_threshold(config: ml_collections.ConfigDict, method: str, inv_tau: float) -> float:
  """The global-norm clipping threshold of `config.optimizer` in `method`'s loss units.

  With `clip_in_logit_units`, `clip_grad_norm` is one threshold for every method: InfoLOOB and
  CLOOB divide their loss by s = inv_tau (CLOOB.md), so their gradients are s times smaller
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
