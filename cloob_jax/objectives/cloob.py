"""CLOOB: ( loob(Ux, Uy) + loob(Vy, Vx) ) / s, with the Hopfield retrievals of `terms`."""

from cloob_jax.objectives import registry
from cloob_jax.objectives import terms


def row_sum(x, y, x_all, y_all, offset, scalars, gather, chunk=None):
  s = scalars["inv_tau"]
  ux, uy_all, vx_all, vy = terms.retrievals(x, y, x_all, y_all, scalars["beta"], gather,
                                             chunk)
  return (terms.loob_rows(ux, uy_all, offset, s, chunk)
          + terms.loob_rows(vy, vx_all, offset, s, chunk)) / s


OBJECTIVE = registry.register(registry.Objective(name="cloob", row_sum=row_sum,
                                                 needs_beta=True, divided_by_inv_tau=True))
