"""Contrastive objectives of the CLOOB paper, all on one page (formulas: docs/method.md).

X, Y are [N, d] L2-normalised image / text embeddings, rows paired by index, s = 1/tau:

    infonce  (CLIP)       ( CE_rows(s X Y^T) + CE_rows(s Y X^T) ) / 2
    infoloob              ( loob(X, Y) + loob(Y, X) ) / s
    cloob                 ( loob(Ux, Uy) + loob(Vy, Vx) ) / s
    hopfield_infonce      ( CE_rows(s Ux Uy^T) + CE_rows(s Vy Vx^T) ) / 2
    siglip                (1/N) sum_ij -log sigmoid( z_ij (s <x_i, y_j> + b) ), z_ij = +-1
    hopfield_siglip       SigLIP's term on (Ux, Uy) and (Vy, Vx), averaged

with Ux = R(X, X), Uy = R(Y, X), Vx = R(X, Y), Vy = R(Y, Y) (hopfield.retrieve).

Each objective is one module of `cloob_jax.objectives` that declares its row-sum (a SUM
over a block of anchor rows scored against the full candidate set, built from
`objectives.terms`), whether it needs beta, its loss units and its learnt scalars. The
full-batch losses here call the row-sum with row offset 0 and the identity "gather"; the
device-sharded loss (parallel.gathered_loss) calls the same function per device with the
device's offset and an all-gather, then sums over devices and divides by N.

Every loss takes a static `chunk`: None (the default of `get_loss`) is the plain formula;
an int C scans [b, C] blocks of candidates (objectives/chunked.py), the same loss and
gradients to rounding in O(b x C) + O(N x d) memory. `resolve_chunk` picks it for a batch:
the train step's loss (parallel.make_loss_fn) chunks from CHUNK_MIN_BATCH on.

Inputs in bfloat16/float16 are cast to float32 first; results are float32 (float64
for float64 inputs). `inv_tau` and `beta` may be python floats or (traced) jax scalars.
"""

import functools
from typing import Callable

import jax

from cloob_jax import objectives
from cloob_jax.objectives import terms

compute_dtype = terms.compute_dtype
PRECISION = terms.PRECISION
ce_rows = terms.ce_rows
loob_rows = terms.loob_rows
sigmoid_rows = terms.sigmoid_rows


def loob(anchors, candidates, inv_tau) -> jax.Array:
  """loob(A, B) = mean_i [ -s<A_i, B_i> + logsumexp_{j != i} s<A_i, B_j> ], A, B [n, d]."""
  return loob_rows(anchors, candidates, 0, inv_tau) / anchors.shape[0]


# Derived from the objectives' declarations (names with aliases: 'infonce' is 'clip').
METHODS = objectives.names(with_aliases=True)
# Objectives whose loss is divided by s = 1/tau (the reference code's scaling): their gradients
# are s times smaller than in logit units.
DIVIDED_BY_INV_TAU = frozenset(m for m in METHODS if objectives.get(m).divided_by_inv_tau)
MAX_LOG_INV_TAU = objectives.MAX_LOG_INV_TAU


def inv_tau_from_log(log_inv_tau: jax.Array) -> jax.Array:
  """s = exp(log s), with log s clipped to [0, MAX_LOG_INV_TAU]."""
  return objectives.LOG_INV_TAU.transform(log_inv_tau)


# 'auto' chunk: from this global batch on, [b, DEFAULT_CHUNK] blocks (None: never).
CHUNK_MIN_BATCH = 8192
DEFAULT_CHUNK = 1024
AUTO = 'auto'


def resolve_chunk(method: str, global_batch: int, chunk=AUTO) -> int | None:
  """The static chunk size for `method` at `global_batch`: None means the plain path.

  chunk: 'auto' (DEFAULT_CHUNK from CHUNK_MIN_BATCH on, when the objective takes a chunk),
  None or 0 (plain), or a positive int (that block size; ValueError if the objective's
  row-sum takes none).
  """
  objective = objectives.get(method)
  if chunk == AUTO:
    if CHUNK_MIN_BATCH is None or global_batch < CHUNK_MIN_BATCH or not objective.takes_chunk:
      return None
    return DEFAULT_CHUNK
  if chunk is None or chunk == 0:
    return None
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ValueError(f'chunk={chunk!r}: expected a positive int, 0 / None (off) or {AUTO!r}.')
  if not objective.takes_chunk:
    raise ValueError(f'objective {method!r}: its row-sum takes no `chunk` keyword, so it '
                     'cannot run chunked; use chunk=None.')
  return chunk


def get_row_sum(method: str, chunk: int | None = None) -> Callable[..., jax.Array]:
  """The block row-sum of `method`: (x, y, x_all, y_all, offset, scalars, gather), with the
  static `chunk` (a resolved one: None or a positive int) bound when it is not None."""
  row_sum = objectives.get(method).row_sum
  if chunk is None:
    return row_sum
  return functools.partial(row_sum, chunk=resolve_chunk(method, 0, chunk))


def check_args(method: str, x, y, beta, **extra) -> None:
  """Raises ValueError for unknown methods, mismatched [N, d] inputs or a missing scalar."""
  objective = objectives.get(method)
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(f'{method}: expected x and y of the same shape [N, d], '
                     f'got {x.shape} and {y.shape}.')
  if objective.needs_beta and beta is None:
    raise ValueError(f'{method} needs the Hopfield inverse temperature beta.')
  for scalar in objective.extra_scalars:
    if extra.get(scalar.name) is None:
      raise ValueError(f'{method} needs its learnt {scalar.name!r}.')


@functools.partial(jax.jit, static_argnums=0)
def _full_batch_loss(method, x, y, inv_tau, beta=None, **extra) -> jax.Array:
  check_args(method, x, y, beta, **extra)
  x, y = terms.cast(x, y)
  scalars = {'inv_tau': inv_tau, 'beta': beta, **extra}
  return get_row_sum(method)(x, y, x, y, 0, scalars, lambda a: a) / x.shape[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chunked_full_batch_loss(method, chunk, x, y, inv_tau, beta=None, **extra) -> jax.Array:
  check_args(method, x, y, beta, **extra)
  x, y = terms.cast(x, y)
  scalars = {'inv_tau': inv_tau, 'beta': beta, **extra}
  return get_row_sum(method, chunk)(x, y, x, y, 0, scalars, lambda a: a) / x.shape[0]


def get_loss(method: str, chunk=None) -> Callable[..., jax.Array]:
  """Full-batch loss by name, uniform signature `(x, y, inv_tau, beta=None, **extra)`.

  Names: objectives.names() ('clip' = 'infonce', 'infoloob', 'cloob', 'hopfield_infonce',
  'siglip', 'hopfield_siglip'). beta is ignored by the methods without retrieval; `extra`
  holds an objective's own learnt scalars (SigLIP's `bias`). chunk: None / 0 (the plain
  formula) or a positive int, the candidates per score block (`resolve_chunk`).
  """
  chunk = resolve_chunk(method, 0, chunk)  # Also fails early on a typo.
  if chunk is None:
    return functools.partial(_full_batch_loss, method)
  return functools.partial(_chunked_full_batch_loss, method, chunk)


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


def siglip(x, y, inv_tau, bias) -> jax.Array:
  """SigLIP: -(1/N) sum_i sum_j log sigmoid( z_ij (s<x_i, y_j> + b) ); x, y [N, d]."""
  return _full_batch_loss('siglip', x, y, inv_tau, bias=bias)


def hopfield_siglip(x, y, inv_tau, beta, bias) -> jax.Array:
  """SigLIP's loss on CLOOB's retrievals (Ux vs Uy, Vy vs Vx), averaged; x, y [N, d]."""
  return _full_batch_loss('hopfield_siglip', x, y, inv_tau, beta, bias=bias)
