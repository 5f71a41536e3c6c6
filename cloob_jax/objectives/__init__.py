"""Contrastive objectives, one module each, registered by name (`registry`).

    from cloob_jax import objectives
    objectives.get("cloob").row_sum, objectives.get("siglip").extra_scalars, objectives.names()

To add one: a module here that builds its row-sum from `terms` and calls
`registry.register(...)`, plus its import below. losses.py, the sharded loss, the train
state, gradient clipping and config validation all read the declaration.
"""

from cloob_jax.objectives.registry import get
from cloob_jax.objectives.registry import LOG_INV_TAU
from cloob_jax.objectives.registry import MAX_LOG_INV_TAU
from cloob_jax.objectives.registry import names
from cloob_jax.objectives.registry import Objective
from cloob_jax.objectives.registry import register
from cloob_jax.objectives.registry import Scalar

# The registered objectives (import order = the order of `names()`).
from cloob_jax.objectives import cloob  # noqa: F401,E402
from cloob_jax.objectives import infonce  # noqa: F401,E402
from cloob_jax.objectives import infoloob  # noqa: F401,E402
from cloob_jax.objectives import hopfield_infonce  # noqa: F401,E402
from cloob_jax.objectives import siglip  # noqa: F401,E402
from cloob_jax.objectives import hopfield_siglip  # noqa: F401,E402
