"""The objective registry: each objective is one module that declares itself here.

    registry.register(registry.Objective(
        name="siglip", row_sum=row_sum, scalars=(registry.LOG_INV_TAU, BIAS)))

An Objective says everything the rest of the code needs: its block row-sum (the formula,
written once for the full batch and for the sharded step), whether it needs the Hopfield
beta, whether its loss is divided by s = 1/tau (the units of gradient clipping), and the
learnt scalars the train state holds for it (their initial values and ranges), and whether its
loss reads the embeddings alone (what gradient accumulation needs: `embeddings_only`).

A row-sum is `row_sum(x, y, x_all, y_all, offset, scalars, gather)`:
  x, y: this block's rows [b, d]; x_all, y_all: the global batch [N, d];
  offset: the global index of x[0]; scalars: {'inv_tau': s, 'beta': beta or None, and each
  declared scalar's name: value}; gather: maps a per-block [b, d] array to the global [N, d]
  one (the identity on one device).
It returns the block's share of N * loss, so that loss = (sum over blocks) / N.
It may also take a keyword `chunk` (None or a static int C) and pass it to the terms, which
then score [b, C] blocks of candidates at a time instead of [b, N] (terms.py, chunked.py);
every built-in objective does. One without it runs plain (`takes_chunk`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable

# A learnt 1/tau is kept as log(s), clipped to [0, log 100]: 1 <= s <= 100 (CLIP's cap).
MAX_LOG_INV_TAU = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class Scalar:
  """A learnt scalar of the objective, kept in the train state's params as `param`.

  `init(config)` gives its initial value; after each update it is clipped to [low, high]
  (None: unbounded). The row-sum sees it as scalars[name]: `transform(param value)`.
  """
  name: str
  param: str
  init: Callable[[Any], float]
  low: float | None = None
  high: float | None = None
  transform: Callable[[Any], Any] = lambda v: v


def _inv_tau_from_log(log_inv_tau):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.exp(jnp.clip(log_inv_tau, 0.0, MAX_LOG_INV_TAU))


# Every objective scales its scores by s = 1/tau, kept as log s in params['logit_scale'],
# starting at config.inv_tau (learnt unless config.learn_inv_tau is False).
LOG_INV_TAU = Scalar(name="inv_tau", param="logit_scale",
                     init=lambda config: math.log(config.inv_tau), low=0.0,
                     high=MAX_LOG_INV_TAU, transform=_inv_tau_from_log)


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  row_sum: Callable[..., Any]
  needs_beta: bool = False
  divided_by_inv_tau: bool = False  # the loss is divided by s: gradients s times smaller
  scalars: tuple[Scalar, ...] = (LOG_INV_TAU,)
  aliases: tuple[str, ...] = ()
  # Whether the loss is a function of the batch's embeddings and the learnt scalars alone, so
  # that full-batch gradient accumulation (config.accum_steps > 1: embed, take the loss of the
  # precomputed embeddings, pull their gradient back per micro-batch) gives its exact gradient.
  # One that also reads the towers' activations or the inputs must say False: it is refused
  # with accum_steps > 1 rather than given a wrong gradient.
  embeddings_only: bool = True

  @property
  def takes_chunk(self) -> bool:
    """Whether the row-sum accepts the keyword `chunk` (the memory-lean block scan)."""
    try:
      return "chunk" in inspect.signature(self.row_sum).parameters
    except (TypeError, ValueError):
      return False

  @property
  def extra_scalars(self) -> tuple[Scalar, ...]:
    """The learnt scalars beyond 1/tau (SigLIP's bias)."""
    return tuple(s for s in self.scalars if s is not LOG_INV_TAU)


_REGISTRY: dict[str, Objective] = {}
_NAMES: list[str] = []  # primary names, in registration order


def register(objective: Objective) -> Objective:
  for name in (objective.name, *objective.aliases):
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is registered twice")
    _REGISTRY[name] = objective
  _NAMES.append(objective.name)
  return objective


def get(name: str) -> Objective:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown contrastive loss {name!r}; known: {', '.join(_REGISTRY)}.")
  return _REGISTRY[name]


def names(with_aliases: bool = False) -> tuple[str, ...]:
  return tuple(_REGISTRY) if with_aliases else tuple(_NAMES)
