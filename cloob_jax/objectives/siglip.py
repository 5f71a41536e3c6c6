"""SigLIP (Zhai et al., 2023): a sigmoid loss on every image-text pair of the batch,

    L = -(1/N) sum_i sum_j log sigmoid( z_ij (s<x_i, y_j> + b) ),  z_ij = 1 if i = j else -1,

with s = 1/tau and the bias b both learnt, starting at s = 10 (configs set inv_tau) and
b = config.get('init_bias', -10). Each device sums its [local, global] block of pairs.
"""

from cloob_jax.objectives import registry
from cloob_jax.objectives import terms

BIAS = registry.Scalar(name="bias", param="logit_bias",
                       init=lambda config: float(config.get("init_bias", -10.0)))


def row_sum(x, y, x_all, y_all, offset, scalars, gather, chunk=None):
  del x_all, gather  # each pair once: the local images against every text
  return terms.sigmoid_rows(x, y_all, offset, scalars["inv_tau"], scalars["bias"], chunk)


OBJECTIVE = registry.register(registry.Objective(
    name="siglip", row_sum=row_sum, scalars=(registry.LOG_INV_TAU, BIAS)))
