"""Ablation: CLOOB's Hopfield retrievals, then SigLIP's sigmoid loss (no paper has it):

    ( sigmoid_rows(Ux, Uy) + sigmoid_rows(Vy, Vx) ) / 2, with s and the bias b learnt.
"""

from cloob_jax.objectives import registry
from cloob_jax.objectives import siglip
from cloob_jax.objectives import terms


def row_sum(x, y, x_all, y_all, offset, scalars, gather, chunk=None):
  s, b = scalars["inv_tau"], scalars["bias"]
  ux, uy_all, vx_all, vy = terms.retrievals(x, y, x_all, y_all, scalars["beta"], gather,
                                             chunk)
  return (terms.sigmoid_rows(ux, uy_all, offset, s, b, chunk)
          + terms.sigmoid_rows(vy, vx_all, offset, s, b, chunk)) / 2


OBJECTIVE = registry.register(registry.Objective(
    name="hopfield_siglip", row_sum=row_sum, needs_beta=True,
    scalars=(registry.LOG_INV_TAU, siglip.BIAS)))
