"""AdamW with open_clip's weight-decay rule and a warmup + cosine (with restarts) schedule."""

import jax
import jax.numpy as jnp
import ml_collections
import optax


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


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  """-> (optax.GradientTransformation, schedule) for `config.optimizer`."""
  schedule = create_schedule(config, total_steps)
  parts = []
  if config.get("clip_grad_norm", 0.0):
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
