"""Device mesh, shardings and the gathered (device-sharded) contrastive loss.

The global batch is one jax.Array sharded over the mesh's batch axes (`batch_axes`): 'data',
or ('dcn', 'data') on a multi-slice pod, where 'dcn' counts slices (joined by the data-center
network) and 'data' the devices of a slice (joined by ICI). The contrastive
losses need every embedding of the global batch, so `gathered_loss` all-gathers the
embeddings (not the images) and each device scores only its own anchor rows against the
global candidates: memory per device is O(local_batch x global_batch), never
O(global_batch^2); with a chunk size (`chunk`, by default from losses.CHUNK_MIN_BATCH on)
it scores [local, chunk] blocks at a time, O(local_batch x chunk). The formulas themselves
live once, in losses.py (`get_row_sum`); the Hopfield retrieval's statistics, logged by the
train step, are gathered the same way (`gathered_retrieval_stats`).

Outside this module the device count appears only through the mesh: the train step checks
that the global batch splits over it (`local_batch_size`) and the benches report it; no
formula depends on it.
"""

import math
from typing import Callable, Sequence

import jax
from jax.experimental import mesh_utils
import jax.numpy as jnp
import numpy as np

from cloob_jax import losses
from cloob_jax.objectives import diagnostics

AxisName = str | tuple[str, ...]

DCN_AXIS = 'dcn'  # the slices of a multi-slice mesh


def num_slices(devices: Sequence[jax.Device]) -> int:
  """How many slices `devices` span (distinct `Device.slice_index`; 1 where devices have none)."""
  return len({getattr(d, 'slice_index', 0) for d in devices})


def make_mesh(num_devices: int | None = None, axis_name: str = 'data',
              axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Auto,
              devices: Sequence[jax.Device] | None = None,
              slices: int | None = None) -> jax.sharding.Mesh:
  """A data-parallel mesh over the first `num_devices` devices (default: all).

  1-D, (axis_name,), on one slice. Over devices that span several slices, or with
  `slices` > 1, the 2-D (DCN_AXIS, axis_name) mesh of `hybrid_mesh`: the batch splits over
  both, and a reduction over the whole mesh crosses the slow network once, between slices.

  The axis type defaults to Auto, not jax 0.10's Explicit: the towers are written in the
  global view and left to the compiler's sharding propagation, and the one place where
  layout matters (the N x N scores) is pinned by shard_map in `gathered_loss`. Explicit
  axes would make model code spell out shardings for gathers and the like (e.g. EOT
  pooling) for no gain here. Pass AxisType.Explicit to opt in; `gathered_loss` works
  with both.
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'num_devices={num_devices}, but {len(devices)} devices are available.')
    devices = devices[:num_devices]
  slices = num_slices(devices) if slices is None else slices
  if slices > 1:
    return hybrid_mesh(devices, slices, axis_name, axis_type)
  return jax.make_mesh((len(devices),), (axis_name,), axis_types=(axis_type,), devices=devices)


def hybrid_mesh(devices: Sequence[jax.Device], slices: int, axis_name: str = 'data',
                axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Auto
                ) -> jax.sharding.Mesh:
  """The (DCN_AXIS, axis_name) mesh [slices, devices per slice]: row i holds slice i's devices.

  Devices with a `slice_index` (TPU slices, real or libtpu's abstract ones) are laid out by
  jax's hybrid-mesh helper (within a slice in ICI order); devices without one (virtual CPU
  devices in tests) are split in their order into `slices` equal groups.
  """
  devices = list(devices)
  if slices < 1 or len(devices) % slices:
    raise ValueError(f'{len(devices)} devices do not split into {slices} slices.')
  per_slice = len(devices) // slices
  if hasattr(devices[0], 'slice_index'):
    if num_slices(devices) != slices:
      raise ValueError(f'slices={slices}, but the devices span {num_slices(devices)} slices.')
    grid = mesh_utils.create_hybrid_device_mesh((1, per_slice), (slices, 1), devices)
  else:
    grid = np.array(devices, dtype=object).reshape(slices, per_slice)
  return jax.sharding.Mesh(grid, (DCN_AXIS, axis_name), axis_types=(axis_type, axis_type))


def batch_axes(mesh) -> AxisName:
  """The mesh axes a global batch splits over: ('dcn', 'data') on a multi-slice mesh, else
  'data'. The slices are the major axis: slice i holds the i-th block of rows."""
  return (DCN_AXIS, 'data') if DCN_AXIS in mesh.axis_names else 'data'


# Device.platform -> the name jax.default_backend() gives that backend.
_BACKEND_NAMES = {'cuda': 'gpu', 'rocm': 'gpu'}


def platform(mesh: jax.sharding.Mesh) -> str:
  """The platform ('cpu', 'gpu', 'tpu') of the mesh's devices: what a step built on it is
  compiled for, which need not be the process's default backend (deviceless AOT compiles)."""
  name = mesh.devices.flat[0].platform
  return _BACKEND_NAMES.get(name, name)


def batch_sharding(mesh: jax.sharding.Mesh, axis_name: AxisName | None = None
                   ) -> jax.NamedSharding:
  """Sharding of a global batch: leading (batch) dimension split over `axis_name` (default:
  `batch_axes(mesh)`)."""
  return jax.NamedSharding(mesh, jax.P(batch_axes(mesh) if axis_name is None else axis_name))


def replicated_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """Sharding of parameters and scalars replicated on every device."""
  return jax.NamedSharding(mesh, jax.P())


def fsdp_sharding(shape: Sequence[int], mesh: jax.sharding.Mesh, axis_name: str = 'data',
                  min_size: int = 2**14) -> jax.NamedSharding:
  """FSDP: a large array is split over `axis_name` along its largest divisible dimension.

  The rule depends on the shape only, so parameters and their Adam moments shard alike.
  Arrays smaller than `min_size` elements (biases, norms, scalars) stay replicated: sharding
  them saves nothing and costs a collective each. XLA gathers a weight where it is used. On a
  multi-slice mesh the split is within each slice ('data'), so the gathers stay on ICI and
  only the gradients' reduction over slices crosses DCN.
  """
  n = mesh.shape[axis_name]
  if n == 1 or math.prod(shape) < min_size:
    return replicated_sharding(mesh)
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % n == 0:
      spec = [None] * len(shape)
      spec[dim] = axis_name
      return jax.NamedSharding(mesh, jax.P(*spec))
  return replicated_sharding(mesh)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, fsdp: bool = False):
  """Shardings for a train-state pytree: replicated, or FSDP over 'data' when `fsdp`."""
  if not fsdp:
    return jax.tree.map(lambda _: replicated_sharding(mesh), abstract_state)
  return jax.tree.map(lambda x: fsdp_sharding(x.shape, mesh), abstract_state)


def axis_size(mesh: jax.sharding.Mesh, axis_name: AxisName) -> int:
  """Number of shards along `axis_name` (a name or a tuple of names)."""
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  return math.prod(mesh.shape[name] for name in names)


def _is_explicit(mesh, axis_name: AxisName) -> bool:
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  return any(types[name] == jax.sharding.AxisType.Explicit for name in names)


def gathered_loss(method: str, x: jax.Array, y: jax.Array, inv_tau, beta,
                  mesh: jax.sharding.Mesh | None, axis_name: AxisName | None = None,
                  chunk=losses.AUTO, **extra) -> jax.Array:
  """`losses.<method>(x, y, inv_tau, beta)` computed with the batch sharded over devices.

  Each device all-gathers X and Y, computes its own rows of every N x N score matrix
  (for CLOOB: retrievals of its local queries against the global memories, then an
  all-gather of the retrieved candidates Uy, Vx), sums the per-row terms of its anchor
  rows (offset axis_index * local_batch) and the sums are added over devices and divided
  by N. Value and gradients (x, y, inv_tau, beta) equal those of the full-batch loss;
  the gradient of all_gather is a reduce-scatter, which adds up every device's share.

  Args:
    method: an objective's name (objectives.names(): 'clip' / 'infonce', 'cloob', 'siglip', ...).
    x: [N, d] global image embeddings (L2-normalised), ideally sharded P(axis_name).
    y: [N, d] global text embeddings, same sharding.
    inv_tau: s = 1/tau, python float or (traced, replicated) jax scalar.
    beta: Hopfield inverse temperature (ignored, may be None, for infonce/infoloob).
    mesh: the device mesh; None uses the mesh set with `jax.set_mesh`.
    axis_name: mesh axis (or tuple of axes) the batch is split over; None: batch_axes(mesh).
      The gathers, the anchor offset and the sum run over all of them (both axes of a
      multi-slice mesh, slices major).
    chunk: candidates per score block, static (losses.resolve_chunk): 'auto' (chunked from
      losses.CHUNK_MIN_BATCH on), None / 0 (one [local, N] block per term) or an int.
    **extra: the objective's own learnt scalars (SigLIP's `bias`), replicated.

  Returns:
    Scalar loss, replicated; float32 (float64 for float64 inputs).
  """
  losses.check_args(method, x, y, beta, **extra)
  row_sum = losses.get_row_sum(method, losses.resolve_chunk(method, x.shape[0], chunk))
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if axis_name is None:
    axis_name = batch_axes(mesh)
  num_shards = axis_size(mesh, axis_name)
  global_batch = x.shape[0]
  if global_batch % num_shards:
    raise ValueError(f'Global batch {global_batch} is not divisible by the {num_shards} '
                     f'shards of mesh axis {axis_name!r}.')
  # Cast before the gather so that the reduce-scatter of the gradients also sums in f32.
  dtype = losses.compute_dtype(jnp.result_type(x, y))
  x, y = x.astype(dtype), y.astype(dtype)
  spec = jax.P(axis_name)
  if _is_explicit(mesh, axis_name):
    # Explicit axes type the inputs' sharding; shard_map refuses a mismatch, so state it.
    x, y = (jax.sharding.reshard(a, jax.NamedSharding(mesh, spec)) for a in (x, y))
  scalars = {'inv_tau': jnp.asarray(inv_tau, dtype)}
  if beta is not None:
    scalars['beta'] = jnp.asarray(beta, dtype)
  scalars.update({k: jnp.asarray(v, dtype) for k, v in extra.items() if v is not None})

  def gather(a):
    return jax.lax.all_gather(a, axis_name, tiled=True)

  def per_device(x_local, y_local, scalars):
    offset = jax.lax.axis_index(axis_name) * x_local.shape[0]
    block = row_sum(x_local, y_local, gather(x_local), gather(y_local), offset,
                    {'beta': None, **scalars}, gather)
    return jax.lax.psum(block, axis_name) / global_batch

  return jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, jax.P()),
                       out_specs=jax.P())(x, y, scalars)


def gathered_retrieval_stats(x: jax.Array, y: jax.Array, beta,
                             mesh: jax.sharding.Mesh | None,
                             axis_name: AxisName | None = None,
                             chunk: int | None = None) -> dict[str, jax.Array]:
  """`diagnostics.retrieval_stats(x, y, beta, chunk)` with the batch sharded as in
  `gathered_loss`: each device its rows as queries against the gathered memories, sums added
  over devices."""
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if axis_name is None:
    axis_name = batch_axes(mesh)
  spec = jax.P(axis_name)
  if _is_explicit(mesh, axis_name):
    x, y = (jax.sharding.reshard(a, jax.NamedSharding(mesh, spec)) for a in (x, y))
  global_batch = x.shape[0]

  def per_device(x_local, y_local, beta):
    def gather(a):
      return jax.lax.all_gather(a, axis_name, tiled=True)
    sums = diagnostics.row_sums(x_local, y_local, gather(x_local), gather(y_local), beta, chunk)
    return {k: jax.lax.psum(v, axis_name) / (2 * global_batch) for k, v in sums.items()}

  return jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, jax.P()),
                       out_specs=jax.P())(x, y, jnp.asarray(beta, jnp.float32))


def make_retrieval_stats_fn(method: str, mesh: jax.sharding.Mesh | None = None,
                            axis_name: AxisName | None = None, chunk=losses.AUTO
                            ) -> Callable[..., dict]:
  """`fn(image_emb, text_emb, beta) -> {metric: value}`: the Hopfield retrieval's statistics
  (objectives/diagnostics.py) for the train step, sharded and chunked as `make_loss_fn(method,
  mesh, axis_name, chunk)`'s loss: [local, C] score blocks where the loss uses them."""
  losses.resolve_chunk(method, 0, chunk)  # Fail early on a typo or a bad chunk.

  def stats_fn(image_emb, text_emb, beta):
    size = losses.resolve_chunk(method, image_emb.shape[0], chunk)
    active = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if active.empty:
      return diagnostics.retrieval_stats(image_emb, text_emb, beta, size)
    return gathered_retrieval_stats(image_emb, text_emb, beta, active, axis_name, size)

  return stats_fn


def make_loss_fn(method: str, mesh: jax.sharding.Mesh | None = None,
                 axis_name: AxisName | None = None, chunk=losses.AUTO
                 ) -> Callable[..., jax.Array]:
  """Loss on model outputs for the train step: `fn(image_emb, text_emb, inv_tau, beta=None,
  **extra)`, `extra` being the objective's own learnt scalars (SigLIP's `bias`).

  image_emb, text_emb: [B, d] global L2-normalised embeddings sharded P(axis_name) (the
  towers' outputs inside the jitted step); axis_name None: the mesh's `batch_axes`. With a
  mesh of one device, or mesh=None and
  no mesh set, this is the plain full-batch loss; otherwise `gathered_loss` (also on a
  one-device mesh, where it costs nothing and keeps Explicit-axis inputs legal).
  chunk: as in `gathered_loss`, resolved for the global batch B (losses.resolve_chunk).
  """
  losses.resolve_chunk(method, 0, chunk)  # Fail early on a typo or a bad chunk.

  def loss_fn(image_emb, text_emb, inv_tau, beta=None, **extra):
    active = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if active.empty:
      size = losses.resolve_chunk(method, image_emb.shape[0], chunk)
      return losses.get_loss(method, size)(image_emb, text_emb, inv_tau, beta, **extra)
    return gathered_loss(method, image_emb, text_emb, inv_tau, beta, active, axis_name,
                         chunk=chunk, **extra)

  return loss_fn


def local_batch_size(global_batch: int, mesh: jax.sharding.Mesh,
                     axis_name: AxisName | None = None) -> int:
  """Rows per device of a global batch split over `axis_name` (default: the mesh's
  `batch_axes`); raises if it does not divide."""
  num_shards = axis_size(mesh, batch_axes(mesh) if axis_name is None else axis_name)
  if global_batch % num_shards:
    raise ValueError(f'Global batch {global_batch} is not divisible by {num_shards} shards.')
  return global_batch // num_shards

