"""CLIP's InfoNCE: ( CE_rows(s X Y^T) + CE_rows(s Y X^T) ) / 2."""

from cloob_jax.objectives import registry
from cloob_jax.objectives import terms


def row_sum(x, y, x_all, y_all, offset, scalars, gather, chunk=None):
  del gather  # no retrieval
  s = scalars["inv_tau"]
  # Rows of CE_rows(s Y X^T) for the local y are the local text anchors vs all images.
  return (terms.ce_rows(x, y_all, offset, s, chunk)
          + terms.ce_rows(y, x_all, offset, s, chunk)) / 2


OBJECTIVE = registry.register(registry.Objective(name="clip", row_sum=row_sum,
                                                 aliases=("infonce",)))
