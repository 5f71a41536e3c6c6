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
  and their threshold is `clip_grad_norm / inv_tau` (the initial inv_tau when it is learnt).
  Otherwise `clip_grad_norm` is used as it is. 0 means no clipping.
  """
  threshold = float(config.get("clip_grad_norm", 0.0))
  if config.get("clip_in_logit_units", False) and method in losses.DIVIDED_BY_INV_TAU:
    threshold /= inv_tau
  return threshold


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                     clip_grad_norm: float | None = None):
  """-> (optax.GradientTransformation, schedule) for `config.optimizer`.

  `clip_grad_norm`: the threshold in the loss's units (`clip_threshold`); by default
  `config.clip_grad_norm` as it is.
  """
  schedule = create_schedule(config, total_steps)
  if clip_grad_norm is None:
    clip_grad_norm = config.get("clip_grad_norm", 0.0)
  parts = []
  if clip_grad_norm:
    parts.append(optax.clip_by_global_norm(clip_grad_norm))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
