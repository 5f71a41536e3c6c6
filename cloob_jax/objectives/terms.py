"""The per-row terms every objective's row-sum is built from, each written once.

All take a block of anchor rows [b, d] (global rows offset .. offset+b-1), the full
candidate set [N, d] and s = 1/tau, and return a SUM over the block's rows, so that the
full-batch loss (offset 0) and the sharded one (each device its own block, then a psum)
are the same formula.

Each also takes `chunk`: None (the default) is the plain formula, one [b, N] score block at
a time; an int C scans the candidates in [b, C] blocks (`chunked`: the same value and
gradients to rounding, memory O(b x C) + O(N x d) through the backward pass).
"""

import functools

import jax
import jax.numpy as jnp

from cloob_jax import hopfield
from cloob_jax.objectives import chunked

compute_dtype = hopfield.compute_dtype

# Full f32 precision for the score matmuls: at s = 100 a one-pass bf16 dot (TPU default)
# would put errors of ~0.4 into each logit.
PRECISION = hopfield.PRECISION


def cast(*arrays):
  dtype = compute_dtype(jnp.result_type(*arrays))
  return tuple(a.astype(dtype) for a in arrays)


def _check(anchors, candidates):
  if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
    raise ValueError('expected anchors [b, d] and candidates [N, d], '
                     f'got {anchors.shape} and {candidates.shape}.')
  if anchors.shape[0] > candidates.shape[0]:
    raise ValueError(f'more anchor rows ({anchors.shape[0]}) than candidates '
                     f'({candidates.shape[0]}).')


def _logits(anchors, candidates, offset, inv_tau):
  """(s A B^T [b, N], is_positive [b, N]: column offset + i of row i)."""
  anchors, candidates = cast(anchors, candidates)
  inv_tau = jnp.asarray(inv_tau, anchors.dtype)
  logits = inv_tau * jnp.matmul(anchors, candidates.T, precision=PRECISION)
  rows = offset + jnp.arange(anchors.shape[0])
  return logits, rows[:, None] == jnp.arange(candidates.shape[0])[None, :]


# Jitted so that eager calls compile once per shape instead of once per op; free under jit.
@functools.partial(jax.jit, static_argnames='leave_one_out')
def _row_terms(anchors, candidates, offset, inv_tau, leave_one_out):
  """Per-row  -s<A_i, B_{o+i}> + logsumexp_j s<A_i, B_j>  [b] (j != o+i if leave_one_out)."""
  _check(anchors, candidates)
  if leave_one_out and candidates.shape[0] < 2:
    # With the positive left out, a batch of one has no negatives: the loss is undefined.
    raise ValueError('InfoLOOB needs a (global) batch of at least 2, '
                     f'got {candidates.shape[0]}.')
  logits, is_positive = _logits(anchors, candidates, offset, inv_tau)
  positive = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=1)
  if leave_one_out:
    # Exact j != i: the positive carries no weight in the logsumexp, whatever the scale.
    logits = jnp.where(is_positive, -jnp.inf, logits)
  return jax.nn.logsumexp(logits, axis=1) - positive


@functools.partial(jax.jit, static_argnames=('leave_one_out', 'chunk'))
def _chunked_row_terms(anchors, candidates, offset, inv_tau, leave_one_out, chunk):
  """`_row_terms` over [b, chunk] blocks of the scores (chunked.lse_rows)."""
  _check(anchors, candidates)
  if leave_one_out and candidates.shape[0] < 2:
    raise ValueError('InfoLOOB needs a (global) batch of at least 2, '
                     f'got {candidates.shape[0]}.')
  anchors, candidates = cast(anchors, candidates)
  inv_tau = jnp.asarray(inv_tau, anchors.dtype)
  lse = chunked.lse_rows(anchors, candidates, offset, inv_tau, chunk, leave_one_out)
  return lse - chunked.positives(anchors, candidates, offset, inv_tau)


def _rows(anchors, candidates, offset, inv_tau, leave_one_out, chunk):
  if chunk is None:
    return _row_terms(anchors, candidates, offset, inv_tau, leave_one_out=leave_one_out)
  return _chunked_row_terms(anchors, candidates, offset, inv_tau, leave_one_out=leave_one_out,
                            chunk=chunked.check_chunk(chunk))


def ce_rows(anchors, candidates, offset, inv_tau, chunk=None) -> jax.Array:
  """Sum over anchor rows of the cross-entropy with target column offset + i.

  Args:
    anchors: [b, d], rows offset .. offset+b-1 of the global anchor matrix.
    candidates: [N, d], all candidates (the global batch).
    offset: int or int32 scalar (may be traced), global index of anchors[0].
    inv_tau: s, scale of the logits s * A B^T.
    chunk: None (plain) or the number of candidates per score block (static).

  Returns:
    Scalar, sum_i [ -s<A_i, B_{o+i}> + logsumexp_j s<A_i, B_j> ].
  """
  return jnp.sum(_rows(anchors, candidates, offset, inv_tau, False, chunk))


def loob_rows(anchors, candidates, offset, inv_tau, chunk=None) -> jax.Array:
  """Sum over anchor rows of the InfoLOOB term (positive left out of the logsumexp).

  Args: as `ce_rows`; the candidate set must have N >= 2 rows.

  Returns:
    Scalar, sum_i [ -s<A_i, B_{o+i}> + logsumexp_{j != o+i} s<A_i, B_j> ].
  """
  return jnp.sum(_rows(anchors, candidates, offset, inv_tau, True, chunk))


@jax.jit
def _sigmoid_rows(anchors, candidates, offset, inv_tau, bias) -> jax.Array:
  _check(anchors, candidates)
  logits, is_positive = _logits(anchors, candidates, offset, inv_tau)
  logits = logits + jnp.asarray(bias, logits.dtype)
  return jnp.sum(jax.nn.softplus(jnp.where(is_positive, -logits, logits)))


@functools.partial(jax.jit, static_argnames='chunk')
def _chunked_sigmoid_rows(anchors, candidates, offset, inv_tau, bias, chunk) -> jax.Array:
  _check(anchors, candidates)
  anchors, candidates = cast(anchors, candidates)
  inv_tau, bias = (jnp.asarray(v, anchors.dtype) for v in (inv_tau, bias))
  return chunked.sigmoid_sum(anchors, candidates, offset, inv_tau, bias, chunk)


def sigmoid_rows(anchors, candidates, offset, inv_tau, bias, chunk=None) -> jax.Array:
  """Sum over anchor rows and all candidates of SigLIP's pairwise term.

  Args: as `ce_rows`, plus `bias` b.

  Returns:
    Scalar, sum_i sum_j -log sigmoid( z_ij (s<A_i, B_j> + b) ), z_ij = 1 for j = o+i, else -1
    (softplus(-z (s<A_i, B_j> + b)), stable at any scale).
  """
  if chunk is None:
    return _sigmoid_rows(anchors, candidates, offset, inv_tau, bias)
  return _chunked_sigmoid_rows(anchors, candidates, offset, inv_tau, bias,
                               chunk=chunked.check_chunk(chunk))


def retrievals(x, y, x_all, y_all, beta, gather, chunk=None):
  """(Ux, Uy_all, Vx_all, Vy) for this block: local queries against the global memories.

  Ux = R(X, X), Uy = R(Y, X), Vx = R(X, Y), Vy = R(Y, Y) (hopfield.retrieve; with `chunk`,
  chunked.retrieve over blocks of the memory); Uy and Vx serve as candidates, so every block
  needs all of their rows.
  """
  if chunk is not None:
    # Both queries against one memory in one scan: one [N, d] gradient per memory, not two.
    b, chunk = x.shape[0], chunked.check_chunk(chunk)
    queries = jnp.concatenate(cast(x, y))
    u, v = (chunked.retrieve(queries, memory, beta, chunk) for memory in (x_all, y_all))
    return u[:b], gather(u[b:]), gather(v[:b]), v[b:]
  ux = hopfield.retrieve(x, x_all, beta)
  uy = hopfield.retrieve(y, x_all, beta)
  vx = hopfield.retrieve(x, y_all, beta)
  vy = hopfield.retrieve(y, y_all, beta)
  return ux, gather(uy), gather(vx), vy
