"""Modern Hopfield retrieval: one update step of a continuous Hopfield network.

    R(S, M) = normalize_rows( softmax_rows(beta * S M^T) M )

The stored patterns M are the (global) batch of embeddings; retrieval replaces every
query by a softmax-weighted average of the stored patterns similar to it, which is
what lets CLOOB pick up feature co-occurrences (docs/method.md). Gradients flow through
both the queries and the stored patterns.
"""

import jax
import jax.numpy as jnp

# Score matmuls at full f32 precision: TPUs otherwise use one bf16 pass for f32 dots,
# an error of ~beta * 2^-8 in each logit at beta up to ~30.
PRECISION = jax.lax.Precision.HIGHEST

# Floor on the squared norm before rsqrt: only reached by a degenerate (antipodal) memory.
_NORM_EPS = 1e-12


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype losses and retrievals run in: at least float32 (bf16/f16 are cast up)."""
  return jnp.promote_types(dtype, jnp.float32)


def normalize_rows(x: jax.Array) -> jax.Array:
  """L2-normalises the rows of `x` [n, d] -> [n, d]."""
  sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS))


@jax.jit  # One compile per shape for eager callers; inlined under an outer jit.
def retrieve(state: jax.Array, stored: jax.Array, beta) -> jax.Array:
  """Retrieves from a modern Hopfield network, one update step.

  Args:
    state: queries S, [n, d].
    stored: stored patterns M, [m, d]; in CLOOB the (global) batch of embeddings.
    beta: inverse temperature of the retrieval softmax; python float or jax scalar.

  Returns:
    [n, d] retrieved patterns, rows L2-normalised, in `compute_dtype` of the inputs
    (float32 for bfloat16/float16 inputs).
  """
  if state.ndim != 2 or stored.ndim != 2 or state.shape[1] != stored.shape[1]:
    raise ValueError(
        f'retrieve expects state [n, d] and stored [m, d], got {state.shape} and {stored.shape}.')
  dtype = compute_dtype(jnp.result_type(state, stored))
  state, stored = state.astype(dtype), stored.astype(dtype)
  beta = jnp.asarray(beta, dtype)
  scores = beta * jnp.matmul(state, stored.T, precision=PRECISION)  # [n, m]
  weights = jax.nn.softmax(scores, axis=-1)
  return normalize_rows(jnp.matmul(weights, stored, precision=PRECISION))
