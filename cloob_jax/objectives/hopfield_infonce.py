"""Hopfield retrievals then InfoNCE: ( CE_rows(s Ux Uy^T) + CE_rows(s Vy Vx^T) ) / 2."""

from cloob_jax.objectives import registry
from cloob_jax.objectives import terms


def row_sum(x, y, x_all, y_all, offset, scalars, gather, chunk=None):
  s = scalars["inv_tau"]
  ux, uy_all, vx_all, vy = terms.retrievals(x, y, x_all, y_all, scalars["beta"], gather,
                                             chunk)
  return (terms.ce_rows(ux, uy_all, offset, s, chunk)
          + terms.ce_rows(vy, vx_all, offset, s, chunk)) / 2


OBJECTIVE = registry.register(registry.Objective(name="hopfield_infonce", row_sum=row_sum,
                                                 needs_beta=True))
