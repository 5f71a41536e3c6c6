"""Evaluators as plug-ins, built from config entries (big_vision style).

    config.evals.colour = ConfigDict(type='zeroshot_classification', log_steps=1000,
                                     data=dict(source='synthetic', task='colour'))
    embedder = evaluators.Embedder(module, batch_size=256)       # mesh: parallel.make_mesh()
    for name, evaluator in evaluators.build_all(config.evals, embedder).items():
      for metric, value in evaluator.run(variables):            # ('colour/top1', 0.93), ...
        ...

Types: 'zeroshot_classification', 'retrieval', 'linear_probe', 'embedding_analysis',
'attribute_probe', or a
dotted path 'package.module.Class' to an Evaluator subclass elsewhere. `log_steps` is the
trainer's business (how often to run); every other key goes to the evaluator's constructor.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from cloob_jax import config_lib
from cloob_jax.evaluators import attribute_probe  # noqa: F401  (registers its type)
from cloob_jax.evaluators import common
from cloob_jax.evaluators import embedding_analysis  # noqa: F401  (registers its type)
from cloob_jax.evaluators import linear_probe  # noqa: F401
from cloob_jax.evaluators import retrieval  # noqa: F401
from cloob_jax.evaluators import zeroshot  # noqa: F401
from cloob_jax.evaluators.common import Embedder
from cloob_jax.evaluators.common import add_metrics
from cloob_jax.evaluators.common import Evaluator
from cloob_jax.evaluators.common import register
from cloob_jax.evaluators.common import registered_types
from cloob_jax.evaluators.sources import DataUnavailable

# Keys of an eval entry that are for the trainer, not the evaluator.
_SCHEDULING_KEYS = ("type", "log_steps")


def build(name: str, config, embedder: Embedder) -> Evaluator:
  """The evaluator for one config entry `ConfigDict(type=..., log_steps=..., **kwargs)`.

  Raises:
    DataUnavailable: the entry's dataset has not been located (the caller may skip it).
    ValueError / TypeError: an unknown type or keyword.
  """
  kwargs = config_lib.as_dict(config)
  if "type" not in kwargs:
    raise ValueError(f"eval {name!r} has no 'type' (one of {', '.join(registered_types())})")
  cls = common.lookup(kwargs["type"])
  for key in _SCHEDULING_KEYS:
    kwargs.pop(key, None)
  try:
    return cls(name, embedder, **kwargs)
  except TypeError as e:
    raise TypeError(f"eval {name!r} ({cls.__name__}): {e}") from e


def build_all(configs: Mapping[str, Any], embedder: Embedder, *,
              skip_unavailable: bool = True) -> dict[str, Evaluator]:
  """{name: evaluator} for `config.evals`; datasets not located are skipped with a warning."""
  out = {}
  for name, config in (configs or {}).items():
    try:
      out[name] = build(name, config, embedder)
    except DataUnavailable as e:
      if not skip_unavailable:
        raise
      logging.warning("skipping eval %r: %s", name, e)
  return out

__all__ = ["DataUnavailable", "Embedder", "Evaluator", "build", "build_all", "register",
           "registered_types"]
