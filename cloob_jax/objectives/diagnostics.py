"""What the Hopfield retrieval does to a batch: statistics of R(Q, M) for a user to read.

For each memory M (the global batch of image embeddings, then of text embeddings) and each
query set Q (this block's image and text rows), with weights p_i = softmax(beta * q_i M^T):
  patterns: exp(entropy of p_i), the effective number of stored patterns a query averages
            (1: it retrieves one pattern; N: the batch mean);
  cos_query: cos(R_i, q_i), how close the retrieval stays to its own query;
  cos_mean:  cos(R_i, mean of M), how close it is to the batch mean (near 1: blurred).
At a width where unrelated embeddings are far from orthogonal, a small beta gives many
patterns and a retrieval near the batch mean; a large beta gives ~1 pattern and a retrieval
equal to its query, and the leave-one-out contrast then saturates.

`row_sums` returns each statistic summed over the block's 2b query rows, so that the
sharded value (every device its block, then a psum) equals the full batch's; divide by 2N.
Computed on stopped gradients: one [2b, N] score block per memory, or with `chunk` (the loss's
own block size) [2b, C] blocks at a time (`chunked.softmax_statistics`), so that the
statistics need no more memory than the chunked loss.
"""

import jax
import jax.numpy as jnp

from cloob_jax import hopfield
from cloob_jax.objectives import chunked

NAMES = ("patterns", "cos_query", "cos_mean")
MEMORIES = ("image_memory", "text_memory")


def metric_names() -> tuple[str, ...]:
  """The metrics the train step logs for an objective with a Hopfield retrieval."""
  return tuple(f"hopfield/{m}/{n}" for m in MEMORIES for n in NAMES)


def row_sums(x, y, x_all, y_all, beta, chunk=None) -> dict[str, jax.Array]:
  """{metric name: the sum over this block's queries (x and y rows)} for both memories;
  `chunk`: None, or the memory rows per score block."""
  x, y, x_all, y_all = (jax.lax.stop_gradient(a).astype(hopfield.compute_dtype(a.dtype))
                        for a in (x, y, x_all, y_all))
  beta = jnp.asarray(jax.lax.stop_gradient(beta), x.dtype)
  queries = hopfield.normalize_rows(jnp.concatenate([x, y]))  # [2b, d]
  out = {}
  for name, memory in zip(MEMORIES, (x_all, y_all)):
    if chunk is None:
      scores = beta * jnp.matmul(queries, memory.T, precision=hopfield.PRECISION)  # [2b, N]
      log_p = jax.nn.log_softmax(scores, axis=-1)
      p = jnp.exp(log_p)
      entropy = -jnp.sum(p * log_p, axis=-1)
      retrieved = hopfield.normalize_rows(jnp.matmul(p, memory, precision=hopfield.PRECISION))
    else:
      retrieved, entropy = chunked.softmax_statistics(queries, memory, beta, chunk)
    mean = hopfield.normalize_rows(jnp.sum(memory, axis=0, keepdims=True))[0]
    out[f"hopfield/{name}/patterns"] = jnp.sum(jnp.exp(entropy))
    out[f"hopfield/{name}/cos_query"] = jnp.sum(retrieved * queries)
    out[f"hopfield/{name}/cos_mean"] = jnp.sum(retrieved @ mean)
  return out


def retrieval_stats(x, y, beta, chunk=None) -> dict[str, jax.Array]:
  """The full-batch statistics (means over the 2N queries) of embeddings x, y [N, d]."""
  return {k: v / (2 * x.shape[0]) for k, v in row_sums(x, y, x, y, beta, chunk).items()}
