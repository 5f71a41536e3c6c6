"""InfoLOOB without Hopfield retrieval: ( loob(X, Y) + loob(Y, X) ) / s."""

from cloob_jax.objectives import registry
from cloob_jax.objectives import terms


def row_sum(x, y, x_all, y_all, offset, scalars, gather, chunk=None):
  del gather  # no retrieval
  s = scalars["inv_tau"]
  return (terms.loob_rows(x, y_all, offset, s, chunk)
          + terms.loob_rows(y, x_all, offset, s, chunk)) / s


OBJECTIVE = registry.register(registry.Objective(name="infoloob", row_sum=row_sum,
                                                 divided_by_inv_tau=True))
