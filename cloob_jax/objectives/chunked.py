"""Chunked (memory-lean) forms of the terms: [b, C] score blocks, never a [b, N] one.

Each scans the candidates (or stored patterns) [N, d] in blocks of C rows with
`jax.lax.scan`, an online logsumexp (running max and running sum) where a row needs a
softmax, and keeps O(b x C) + O(N x d) memory through the backward pass too:

  lse_rows      the per-row logsumexp of InfoNCE / InfoLOOB (the positive left out exactly,
                at global index offset + i); each block body under `jax.checkpoint`, so the
                backward pass recomputes a block (the carry is two [b] vectors).
  sigmoid_sum   SigLIP's pairwise sum, a plain sum over blocks, bodies checkpointed.
  retrieve      R(S, M) = normalize_rows(softmax_rows(beta S M^T) M) as a `jax.custom_vjp`
                (a checkpointed scan would keep the [b, d] accumulator of every block): the
                backward pass recomputes each block's weights from the saved per-row
                logsumexp, as flash attention does. Gradients reach S, M and beta.
  softmax_statistics  the same retrieval and the entropy of each row's weights, no gradient
                (the retrieval statistics the train step logs, objectives/diagnostics.py).

N need not be a multiple of C: the last block is zero-padded and its padding masked out.
`terms` calls these when given a chunk size; without one it runs the plain formulas.
"""

import functools

import jax
import jax.numpy as jnp

from cloob_jax import hopfield

PRECISION = hopfield.PRECISION


def check_chunk(chunk) -> int:
  """`chunk` as a positive python int; raises ValueError otherwise."""
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f'chunk={chunk!r}: expected a positive int (or None for the plain path).')
  return chunk


def _blocks(candidates, chunk):
  """([n, C, d] zero-padded blocks of the rows of `candidates`, block indices [n], C)."""
  size = candidates.shape[0]
  chunk = min(check_chunk(chunk), size)
  num = -(-size // chunk)
  padded = jnp.pad(candidates, ((0, num * chunk - size), (0, 0)))
  return padded.reshape(num, chunk, candidates.shape[1]), jnp.arange(num), chunk


def _floor(dtype):
  # Start of the running max: finite, so that a row whose block is all masked stays finite.
  return jnp.finfo(dtype).min


def _varying_axes(x) -> frozenset:
  aval = jax.typeof(x)
  if hasattr(aval, 'manual_axis_type'):  # jax >= 0.10
    return frozenset(aval.manual_axis_type.varying)
  return frozenset(getattr(aval, 'vma', ()))


def _varying_like(carry, *inputs):
  """`carry` cast to vary over the manual mesh axes the inputs vary over (under shard_map a
  scan's carry must keep one type; outside it there are none and this is the identity)."""
  axes = frozenset().union(*(_varying_axes(a) for a in inputs))

  def cast(c):
    missing = tuple(sorted(axes - _varying_axes(c)))
    return jax.lax.pcast(c, missing, to='varying') if missing else c

  return jax.tree.map(cast, carry)


def _dot_t(a, b):
  return jnp.matmul(a, b.T, precision=PRECISION)


def lse_rows(anchors, candidates, offset, inv_tau, chunk, leave_one_out):
  """Per-row logsumexp_j s<A_i, B_j> [b] (over j != offset + i if leave_one_out)."""
  size = candidates.shape[0]
  blocks, index, chunk = _blocks(candidates, chunk)
  rows = offset + jnp.arange(anchors.shape[0])

  @jax.checkpoint
  def body(carry, xs):
    running_max, running_sum = carry
    block, k = xs
    cols = k * chunk + jnp.arange(chunk)
    drop = cols[None, :] >= size
    if leave_one_out:
      drop = drop | (rows[:, None] == cols[None, :])
    logits = jnp.where(drop, -jnp.inf, inv_tau * _dot_t(anchors, block))
    # The logsumexp does not depend on the shift, so the max carries no gradient.
    new_max = jnp.maximum(running_max, jax.lax.stop_gradient(jnp.max(logits, axis=1)))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
    return (new_max, running_sum), None

  b = anchors.shape[0]
  init = (jnp.full((b,), _floor(anchors.dtype), anchors.dtype), jnp.zeros((b,), anchors.dtype))
  init = _varying_like(init, anchors, candidates, inv_tau, offset)
  (running_max, running_sum), _ = jax.lax.scan(body, init, (blocks, index))
  return running_max + jnp.log(running_sum)


def positives(anchors, candidates, offset, inv_tau):
  """s<A_i, B_{offset+i}> [b], without any [b, N] block."""
  paired = jax.lax.dynamic_slice_in_dim(candidates, offset, anchors.shape[0], axis=0)
  return inv_tau * jnp.sum(anchors * paired, axis=1)


def sigmoid_sum(anchors, candidates, offset, inv_tau, bias, chunk):
  """sum_i sum_j softplus(-z_ij (s<A_i, B_j> + b)), z_ij = 1 for j = offset + i, else -1."""
  size = candidates.shape[0]
  blocks, index, chunk = _blocks(candidates, chunk)
  rows = offset + jnp.arange(anchors.shape[0])

  @jax.checkpoint
  def body(total, xs):
    block, k = xs
    cols = k * chunk + jnp.arange(chunk)
    logits = inv_tau * _dot_t(anchors, block) + bias
    terms = jax.nn.softplus(jnp.where(rows[:, None] == cols[None, :], -logits, logits))
    return total + jnp.sum(jnp.where(cols[None, :] < size, terms, 0.0)), None

  init = _varying_like(jnp.zeros((), anchors.dtype), anchors, candidates, inv_tau, bias, offset)
  total, _ = jax.lax.scan(body, init, (blocks, index))
  return total


def _average_forward(state, stored, beta, chunk, mean_score=False):
  """(softmax_rows(beta S M^T) M [b, d], per-row logsumexp of beta S M^T [b]); with
  `mean_score`, also each row's softmax-weighted mean score sum_j p_ij beta<S_i, M_j> [b]."""
  size = stored.shape[0]
  blocks, index, chunk = _blocks(stored, chunk)
  b, d = state.shape

  def body(carry, xs):
    running_max, running_sum, acc, score_sum = carry
    block, k = xs
    cols = k * chunk + jnp.arange(chunk)
    valid = cols[None, :] < size
    scores = jnp.where(valid, beta * _dot_t(state, block), -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(scores, axis=1))
    rescale = jnp.exp(running_max - new_max)
    weights = jnp.exp(scores - new_max[:, None])
    running_sum = running_sum * rescale + jnp.sum(weights, axis=1)
    acc = acc * rescale[:, None] + jnp.matmul(weights, block, precision=PRECISION)
    if mean_score:  # masked columns: weight 0 times score -inf would be nan
      score_sum = score_sum * rescale + jnp.sum(jnp.where(valid, weights * scores, 0.0), axis=1)
    return (new_max, running_sum, acc, score_sum), None

  init = (jnp.full((b,), _floor(state.dtype), state.dtype), jnp.zeros((b,), state.dtype),
          jnp.zeros((b, d), state.dtype), jnp.zeros((b,) if mean_score else (), state.dtype))
  init = _varying_like(init, state, stored, beta)
  (running_max, running_sum, acc, score_sum), _ = jax.lax.scan(body, init, (blocks, index))
  out = (acc / running_sum[:, None], running_max + jnp.log(running_sum))
  return out + (score_sum / running_sum,) if mean_score else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_average(state, stored, beta, chunk):
  return _average_forward(state, stored, beta, chunk)[0]


def _softmax_average_fwd(state, stored, beta, chunk):
  out, lse = _average_forward(state, stored, beta, chunk)
  return out, (state, stored, beta, out, lse)


def _softmax_average_bwd(chunk, residuals, grad_out):
  state, stored, beta, out, lse = residuals
  size, d = stored.shape
  blocks, index, chunk = _blocks(stored, chunk)
  delta = jnp.sum(grad_out * out, axis=1)  # [b]: sum_k P_ik (dO_i . M_k)

  def body(carry, xs):
    grad_state, grad_beta = carry
    block, k = xs
    cols = k * chunk + jnp.arange(chunk)
    dots = _dot_t(state, block)
    weights = jnp.exp(jnp.where(cols[None, :] < size, beta * dots, -jnp.inf) - lse[:, None])
    grad_scores = weights * (_dot_t(grad_out, block) - delta[:, None])
    grad_block = (jnp.matmul(weights.T, grad_out, precision=PRECISION)
                  + beta * jnp.matmul(grad_scores.T, state, precision=PRECISION))
    grad_state = grad_state + beta * jnp.matmul(grad_scores, block, precision=PRECISION)
    grad_beta = grad_beta + jnp.sum(grad_scores * dots)
    return (grad_state, grad_beta), grad_block

  init = _varying_like((jnp.zeros_like(state), jnp.zeros_like(beta)), state, stored, beta,
                       grad_out)
  (grad_state, grad_beta), grad_blocks = jax.lax.scan(body, init, (blocks, index))
  return grad_state, grad_blocks.reshape(-1, d)[:size], grad_beta


_softmax_average.defvjp(_softmax_average_fwd, _softmax_average_bwd)


def retrieve(state, stored, beta, chunk):
  """hopfield.retrieve(state, stored, beta), scanning `stored` in blocks of `chunk` rows."""
  if state.ndim != 2 or stored.ndim != 2 or state.shape[1] != stored.shape[1]:
    raise ValueError(
        f'retrieve expects state [n, d] and stored [m, d], got {state.shape} and {stored.shape}.')
  dtype = hopfield.compute_dtype(jnp.result_type(state, stored))
  state, stored = state.astype(dtype), stored.astype(dtype)
  beta = jnp.asarray(beta, dtype)
  # Under shard_map a replicated beta enters as varying (the cast's transpose sums its
  # gradient over devices), since the rule's gradients vary like the blocks they come from.
  state, stored, beta = _varying_like((state, stored, beta), state, stored, beta)
  return hopfield.normalize_rows(_softmax_average(state, stored, beta, check_chunk(chunk)))


def softmax_statistics(state, stored, beta, chunk):
  """Of each row's retrieval weights p_i = softmax(beta S_i M^T), without a [b, N] block:
  (the retrieval R(S, M) [b, d] (rows normalised), the entropy of p_i [b]). No gradient."""
  dtype = hopfield.compute_dtype(jnp.result_type(state, stored))
  state, stored = (jax.lax.stop_gradient(a).astype(dtype) for a in (state, stored))
  beta = jnp.asarray(jax.lax.stop_gradient(beta), dtype)
  average, lse, mean_score = _average_forward(state, stored, beta, check_chunk(chunk),
                                              mean_score=True)
  # -sum_j p_ij log p_ij = logsumexp_j beta<S_i, M_j> - sum_j p_ij beta<S_i, M_j>
  return hopfield.normalize_rows(average), lse - mean_score
