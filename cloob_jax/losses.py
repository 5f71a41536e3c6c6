"""Contrastive objectives of the CLOOB paper, all on one page (formulas: docs/CLOOB.md).

X, Y are [N, d] L2-normalised image / text embeddings, rows paired by index, s = 1/tau:

    infonce  (CLIP)       ( CE_rows(s X Y^T) + CE_rows(s Y X^T) ) / 2
    infoloob              ( loob(X, Y) + loob(Y, X) ) / s
    cloob                 ( loob(Ux, Uy) + loob(Vy, Vx) ) / s
    hopfield_infonce      ( CE_rows(s Ux Uy^T) + CE_rows(s Vy Vx^T) ) / 2

with Ux = R(X, X), Uy = R(Y, X), Vx = R(X, Y), Vy = R(Y, Y) (hopfield.retrieve).

Every formula is written once, as a SUM over a block of anchor rows scored against the
full candidate set (`ce_rows`, `loob_rows`, and per method a `row_sum` function). The
full-batch losses here call them with row offset 0 and the identity "gather"; the
device-sharded loss (parallel.gathered_loss) calls the same functions per device with
the device's offset and an all-gather, then sums over devices and divides by N.

Inputs in bfloat16/float16 are cast to float32 first; results are float32 (float64
for float64 inputs). `inv_tau` and `beta` may be python floats or (traced) jax scalars.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from cloob_jax import hopfield

compute_dtype = hopfield.compute_dtype

# Full f32 precision for the score matmuls: at s = 100 a one-pass bf16 dot (TPU default)
# would put errors of ~0.4 into each logit.
PRECISION = hopfield.PRECISION


def _cast(*arrays):
  dtype = compute_dtype(jnp.result_type(*arrays))
  return tuple(a.astype(dtype) for a in arrays)


# Jitted so that eager calls compile once per shape instead of once per op; free under jit.
@functools.partial(jax.jit, static_argnames='leave_one_out')
def _row_terms(anchors, candidates, offset, inv_tau, leave_one_out):
  """Per-row  -s<A_i, B_{o+i}> + logsumexp_j s<A_i, B_j>  [b] (j != o+i if leave_one_out)."""
  if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
    raise ValueError('expected anchors [b, d] and candidates [N, d], '
                     f'got {anchors.shape} and {candidates.shape}.')
  if anchors.shape[0] > candidates.shape[0]:
    raise ValueError(f'more anchor rows ({anchors.shape[0]}) than candidates '
                     f'({candidates.shape[0]}).')
  if leave_one_out and candidates.shape[0] < 2:
    # With the positive left out, a batch of one has no negatives: the loss is undefined.
    raise ValueError('InfoLOOB needs a (global) batch of at least 2, '
                     f'got {candidates.shape[0]}.')
  anchors, candidates = _cast(anchors, candidates)
  inv_tau = jnp.asarray(inv_tau, anchors.dtype)
  logits = inv_tau * jnp.matmul(anchors, candidates.T, precision=PRECISION)  # [b, N]
  rows = offset + jnp.arange(anchors.shape[0])
  is_positive = rows[:, None] == jnp.arange(candidates.shape[0])[None, :]  # [b, N]
  positive = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=1)
  if leave_one_out:
    # Exact j != i: the positive carries no weight in the logsumexp, whatever the scale.
    logits = jnp.where(is_positive, -jnp.inf, logits)
  return jax.nn.logsumexp(logits, axis=1) - positive


def ce_rows(anchors, candidates, offset, inv_tau) -> jax.Array:
  """Sum over anchor rows of the cross-entropy with target column offset + i.

  Args:
    anchors: [b, d], rows offset .. offset+b-1 of the global anchor matrix.
    candidates: [N, d], all candidates (the global batch).
    offset: int or int32 scalar (may be traced), global index of anchors[0].
    inv_tau: s, scale of the logits s * A B^T.

  Returns:
    Scalar, sum_i [ -s<A_i, B_{o+i}> + logsumexp_j s<A_i, B_j> ].
  """
  return jnp.sum(_row_terms(anchors, candidates, offset, inv_tau, leave_one_out=False))


def loob_rows(anchors, candidates, offset, inv_tau) -> jax.Array:
  """Sum over anchor rows of the InfoLOOB term (positive left out of the logsumexp).

  Args: as `ce_rows`; the candidate set must have N >= 2 rows.

  Returns:
    Scalar, sum_i [ -s<A_i, B_{o+i}> + logsumexp_{j != o+i} s<A_i, B_j> ].
  """
  return jnp.sum(_row_terms(anchors, candidates, offset, inv_tau, leave_one_out=True))


def loob(anchors, candidates, inv_tau) -> jax.Array:
  """loob(A, B) = mean_i [ -s<A_i, B_i> + logsumexp_{j != i} s<A_i, B_j> ], A, B [n, d]."""
  return loob_rows(anchors, candidates, 0, inv_tau) / anchors.shape[0]


# Per-method row sums. Signature (x, y, x_all, y_all, offset, inv_tau, beta, gather):
#   x, y: this block's rows [b, d]; x_all, y_all: the global batch [N, d];
#   gather: maps a per-block [b, d] array to the global [N, d] one (identity on one device).
# Each returns the block's share of N * loss, so loss = sum over blocks / N.


def _infonce_row_sum(x, y, x_all, y_all, offset, inv_tau, beta, gather):
  del beta, gather  # No retrieval.
  # Rows of CE_rows(s Y X^T) for the local y are the local text anchors vs all images.
  return (ce_rows(x, y_all, offset, inv_tau) + ce_rows(y, x_all, offset, inv_tau)) / 2


def _infoloob_row_sum(x, y, x_all, y_all, offset, inv_tau, beta, gather):
  del beta, gather  # No retrieval.
  terms = loob_rows(x, y_all, offset, inv_tau) + loob_rows(y, x_all, offset, inv_tau)
  return terms / inv_tau


def _retrievals(x, y, x_all, y_all, beta, gather):
  """(Ux, Uy_all, Vx_all, Vy) for this block: local queries against the global memories."""
  ux = hopfield.retrieve(x, x_all, beta)
  uy = hopfield.retrieve(y, x_all, beta)
  vx = hopfield.retrieve(x, y_all, beta)
  vy = hopfield.retrieve(y, y_all, beta)
  # Uy and Vx serve as candidates, so every block needs all of their rows.
  return ux, gather(uy), gather(vx), vy


def _cloob_row_sum(x, y, x_all, y_all, offset, inv_tau, beta, gather):
  ux, uy_all, vx_all, vy = _retrievals(x, y, x_all, y_all, beta, gather)
  terms = loob_rows(ux, uy_all, offset, inv_tau) + loob_rows(vy, vx_all, offset, inv_tau)
  return terms / inv_tau


def _hopfield_infonce_row_sum(x, y, x_all, y_all, offset, inv_tau, beta, gather):
  ux, uy_all, vx_all, vy = _retrievals(x, y, x_all, y_all, beta, gather)
  return (ce_rows(ux, uy_all, offset, inv_tau) + ce_rows(vy, vx_all, offset, inv_tau)) / 2


_ROW_SUMS = {
    'clip': _infonce_row_sum,
    'infonce': _infonce_row_sum,
    'infoloob': _infoloob_row_sum,
    'cloob': _cloob_row_sum,
    'hopfield_infonce': _hopfield_infonce_row_sum,
}
_NEEDS_BETA = frozenset({'cloob', 'hopfield_infonce'})
METHODS = tuple(_ROW_SUMS)
# Objectives whose loss is divided by s = 1/tau (the reference code's scaling): their gradients
# are s times smaller than in logit units.
DIVIDED_BY_INV_TAU = frozenset({'infoloob', 'cloob'})
# A learnt temperature is kept as log(s), clipped to [0, log 100]: 1 <= s <= 100 (CLIP's cap).
MAX_LOG_INV_TAU = math.log(100.0)


def inv_tau_from_log(log_inv_tau: jax.Array) -> jax.Array:
  """s = exp(log s), with log s clipped to [0, MAX_LOG_INV_TAU]."""
  return jnp.exp(jnp.clip(log_inv_tau, 0.0, MAX_LOG_INV_TAU))


def get_row_sum(method: str) -> Callable[..., jax.Array]:
  """The block row-sum of `method`: (x, y, x_all, y_all, offset, inv_tau, beta, gather)."""
  if method not in _ROW_SUMS:
    raise ValueError(f'Unknown contrastive loss {method!r}; known: {", ".join(METHODS)}.')
  return _ROW_SUMS[method]


def check_args(method: str, x, y, beta) -> None:
  """Raises ValueError for unknown methods, mismatched [N, d] inputs or a missing beta."""
  get_row_sum(method)
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(f'{method}: expected x and y of the same shape [N, d], '
                     f'got {x.shape} and {y.shape}.')
  if method in _NEEDS_BETA and beta is None:
    raise ValueError(f'{method} needs the Hopfield inverse temperature beta.')


@functools.partial(jax.jit, static_argnums=0)
def _full_batch_loss(method, x, y, inv_tau, beta=None) -> jax.Array:
  check_args(method, x, y, beta)
  x, y = _cast(x, y)
  row_sum = get_row_sum(method)
  return row_sum(x, y, x, y, 0, inv_tau, beta, lambda a: a) / x.shape[0]


def get_loss(method: str) -> Callable[..., jax.Array]:
  """Full-batch loss by name, uniform signature `(x, y, inv_tau, beta=None) -> scalar`.

  Names: 'clip' (= 'infonce'), 'infoloob', 'cloob', 'hopfield_infonce'. beta is ignored
  by the methods without retrieval.
  """
  get_row_sum(method)  # Fail early on a typo.
  return functools.partial(_full_batch_loss, method)


def infonce(x, y, inv_tau) -> jax.Array:
  """CLIP's InfoNCE: ( CE_rows(s X Y^T) + CE_rows(s Y X^T) ) / 2; x, y [N, d] -> scalar."""
  return _full_batch_loss('infonce', x, y, inv_tau)


def infoloob(x, y, inv_tau) -> jax.Array:
  """InfoLOOB without Hopfield: ( loob(X, Y) + loob(Y, X) ) / s; x, y [N, d], N >= 2."""
  return _full_batch_loss('infoloob', x, y, inv_tau)


def cloob(x, y, inv_tau, beta) -> jax.Array:
  """CLOOB: ( loob(Ux, Uy) + loob(Vy, Vx) ) / s with Hopfield retrievals; x, y [N, d], N >= 2."""
  return _full_batch_loss('cloob', x, y, inv_tau, beta)


def hopfield_infonce(x, y, inv_tau, beta) -> jax.Array:
  """Hopfield + InfoNCE: ( CE_rows(s Ux Uy^T) + CE_rows(s Vy Vx^T) ) / 2; x, y [N, d]."""
  return _full_batch_loss('hopfield_infonce', x, y, inv_tau, beta)
