"""What every evaluator shares: the `Embedder` (jitted sharded towers), base class, registry.

    embedder = Embedder(module, batch_size=256)           # mesh: parallel.make_mesh()
    img = embedder.embed_images(variables, uint8_images)   # np.float32 [n, d]
    txt = embedder.embed_strings(variables, ["a photo of a cat."])

On a mesh that spans several processes (a pod), each process embeds only its share of an
image set (`Embedder.share`), and evaluators combine small results across processes
(`Embedder.sum_over_processes`, `Embedder.gather`); see `embed_labelled_share`.

An evaluator is a class registered under a type name and built from a config entry
`ConfigDict(type=..., log_steps=..., **kwargs)` by `evaluators.build(name, config, embedder)`.
Its `run(variables)` yields `(metric_name, value)` pairs named `'{task}/{metric}'`, where the
task is the evaluator's name (e.g. `colour/top1`). The trainer knows nothing about any evaluator.
"""

from __future__ import annotations

import abc
import collections
import functools
import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from cloob_jax import parallel
from cloob_jax.data import tokenizer
from cloob_jax.models import inputs
from cloob_jax.models import layers

Metrics = Iterator[tuple[str, float]]

_REGISTRY: dict[str, type["Evaluator"]] = {}


def register(type_name: str) -> Callable[[type["Evaluator"]], type["Evaluator"]]:
  """Class decorator: makes an Evaluator buildable as `ConfigDict(type=type_name, ...)`."""

  def decorator(cls):
    if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
      raise ValueError(f"evaluator type {type_name!r} is registered twice")
    _REGISTRY[type_name] = cls
    cls.type_name = type_name
    return cls

  return decorator


def registered_types() -> list[str]:
  return sorted(_REGISTRY)


def lookup(type_name: str) -> type["Evaluator"]:
  """The class for a type name, or for a dotted path 'pkg.module.Class' (external plug-ins)."""
  if type_name in _REGISTRY:
    return _REGISTRY[type_name]
  if "." in type_name:
    import importlib  # pylint: disable=g-import-not-at-top
    module_name, _, attr = type_name.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)
  raise ValueError(f"unknown evaluator type {type_name!r}; known: {', '.join(registered_types())}")


def add_metrics(table: dict[str, dict[str, float]], name: str, metrics) -> None:
  """Files an evaluator's ('task/metric', value) pairs into table[task][metric].

  A metric without a task prefix belongs to the evaluator's own entry, `name`.
  """
  for metric, value in metrics:
    task, _, key = metric.partition("/")
    table.setdefault(task if key else name, {})[key or metric] = float(value)


class Evaluator(abc.ABC):
  """Base class. Subclasses take (name, embedder, **config kwargs) and implement `run`."""
  type_name = "?"

  def __init__(self, name: str, embedder: "Embedder"):
    self.name = name
    self.embedder = embedder

  @abc.abstractmethod
  def run(self, variables) -> Metrics:
    """Yields ('{self.name}/{metric}', float) for the model `variables`."""

  def _metric(self, metric: str, value) -> tuple[str, float]:
    return f"{self.name}/{metric}", float(value)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r})"


class _Identity:
  """Remembers which variables pytree it was made for, without keeping the arrays alive.

  Matches when given the same container whose leaves are the very same objects (weak
  references where the leaf allows them): a training step returns new arrays, so caches keyed
  on this are dropped whenever the weights change.
  """

  def __init__(self, variables):
    self._id = id(variables)
    self._leaves = [_ref(leaf) for leaf in jax.tree.leaves(variables)]

  def matches(self, variables) -> bool:
    if id(variables) != self._id:
      return False
    leaves = jax.tree.leaves(variables)
    return len(leaves) == len(self._leaves) and all(r() is leaf
                                                    for r, leaf in zip(self._leaves, leaves))


def _ref(obj):
  try:
    return weakref.ref(obj)
  except TypeError:  # e.g. python scalars: a strong reference is harmless
    return lambda: obj


@functools.lru_cache(maxsize=16)
def encoders(module, mesh: jax.sharding.Mesh):
  """Jitted encoders for a (hashable) linen module on a mesh; shared by embedders.

  Returns (images, texts, images_sharded): the first two return the batch's embeddings
  replicated (every process gets all of them), the third leaves them split like the input,
  so that each process reads back only its own rows.
  """
  batch = parallel.batch_sharding(mesh)
  replicated = parallel.replicated_sharding(mesh)

  def images_fn(variables, images):
    # uint8 in, normalised on device: 4x less host-to-device traffic than float32.
    return module.apply(variables, inputs.normalize(images), method=module.encode_image)

  def texts_fn(variables, tokens):
    return module.apply(variables, tokens, method=module.encode_text)

  # Traced for the mesh's devices (layers.compiling_for), like the train step.
  target = parallel.platform(mesh)
  images_fn, texts_fn = (layers.for_platform(f, target) for f in (images_fn, texts_fn))
  kwargs = dict(in_shardings=(replicated, batch), out_shardings=replicated)
  return (jax.jit(images_fn, **kwargs), jax.jit(texts_fn, **kwargs),
          jax.jit(images_fn, in_shardings=(replicated, batch), out_shardings=batch))


def _process_layout(mesh: jax.sharding.Mesh, batch_size: int) -> tuple[int, int, int]:
  """(processes the mesh spans, this process's rank among them, its rows of a batch)."""
  devices = collections.Counter(d.process_index for d in mesh.devices.flat)
  here = jax.process_index()
  if here not in devices:
    raise ValueError(f"the mesh holds no device of process {here}")
  if len(devices) == 1:
    return 1, 0, batch_size
  if sorted(devices) != list(range(jax.process_count())):
    raise ValueError(f"the mesh spans processes {sorted(devices)} of {jax.process_count()}: "
                     "give a mesh over one process's devices or over every process's")
  if len(set(devices.values())) != 1:
    raise ValueError(f"the mesh holds unequal numbers of devices per process: {dict(devices)}")
  indices = parallel.batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  slices = {index[0].indices(batch_size)[:2] for index in indices.values()}  # replicas: once
  rows = sum(stop - start for start, stop in slices)
  if rows * len(devices) != batch_size:
    raise ValueError(f"the mesh gives this process {rows} of {batch_size} rows per batch, not "
                     f"1/{len(devices)} of them")
  return len(devices), sorted(devices).index(here), rows


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a global array split along axis 0, in the order of the rows' global
  positions (the layout `jax.make_array_from_process_local_data` reads them in)."""
  shards = {}
  for shard in array.addressable_shards:
    shards.setdefault(shard.index[0].start or 0, shard)  # replicas (other mesh axes): once
  return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


class Embedder:
  """Embeds images and texts with a two-tower module, in fixed-size batches over a mesh.

  Each tower is compiled once (per module and mesh, shared between embedders): inputs are
  padded to `batch_size` rows (rounded up to a multiple of the mesh's batch axes) and split
  over them; variables are replicated.

  Two ways to feed it:
    * `embed_images`, `embed_image_batches`, `embed_texts`, `embed_strings`: every process
      passes the whole set and gets all embeddings back (each device encodes its rows of each
      batch). Used for texts (prompts, captions: cheap to tokenise on every host).
    * `embed_image_share`: on a mesh spanning P processes, each process passes only its share
      of an n-image set, `share(n)` (examples rank, rank + P, ...), and gets back only those
      embeddings. Every process makes the same number of device calls, ceil(ceil(n / P) /
      (batch_size / P)), padding its last ones, as the collectives need. Evaluators then
      combine small results (`sum_over_processes`: counts) or gather per-example ones
      (`gather`: embeddings, predictions); images never leave the process that read them.
  On one process (or a mesh over one process's devices) the share is the whole set.

  Attributes:
    image_size: side S of the square images the model takes.
    embed_dim: d, the width of the embeddings.
    context_length: token length L of the text tower.
    batch_size: rows per device call, over all processes.
    process_count: P, the processes the mesh spans; process_rank: this one's index among them.
  """
  process_count = 1
  process_rank = 0

  def __init__(self, module, *, batch_size: int = 256, mesh: jax.sharding.Mesh | None = None,
               progress: bool = True):
    self.module = module
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    shards = parallel.axis_size(self.mesh, parallel.batch_axes(self.mesh))
    self.batch_size = -(-int(batch_size) // shards) * shards
    # The attributes every tower declares (models.towers.ImageTower, models.towers.TextTower).
    self.image_size = int(module.visual.image_size)
    self.context_length = int(module.text.context_length)
    self.embed_dim = int(module.text.embed_dim)
    self.progress = progress
    self._image_fn, self._text_fn, self._image_share_fn = encoders(module, self.mesh)
    self.process_count, self.process_rank, self._local_batch = _process_layout(self.mesh,
                                                                               self.batch_size)
    self._placed: tuple[_Identity, Any] | None = None
    self._cache_identity: _Identity | None = None
    self._cache: dict[Any, Any] = {}

  # -- Variables and caches ---------------------------------------------------------------

  def _place(self, variables):
    """Variables replicated on the mesh; transferred once per variables object."""
    if self._placed is not None and self._placed[0].matches(variables):
      return self._placed[1]
    placed = jax.device_put(variables, parallel.replicated_sharding(self.mesh))
    same = all(a is b for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(variables)))
    # Already replicated (the trainer's params): nothing to keep, and keeping it would hold
    # the old weights alive after the next training step.
    self._placed = None if same else (_Identity(variables), placed)
    return placed

  def cached(self, variables, key, compute: Callable[[], Any]):
    """`compute()`, remembered under `key` for as long as `variables` are the same object.

    Used for zero-shot class embeddings, which evaluators on datasets that share class names
    and prompts (ImageNet and ImageNet V2) then compute once.
    """
    if self._cache_identity is None or not self._cache_identity.matches(variables):
      self._cache_identity = _Identity(variables)
      self._cache = {}
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  # -- Splitting sets between processes -----------------------------------------------------

  def share(self, n: int) -> np.ndarray:
    """Indices of the examples of an n-example set that this process embeds (all on one)."""
    return np.arange(self.process_rank, n, self.process_count)

  def share_size(self, n: int) -> int:
    """ceil(n / P): the largest share, to which every process pads."""
    return -(-n // self.process_count)

  def gather(self, local: np.ndarray, n: int) -> np.ndarray:
    """Every process's `local` rows for its share of an n-example set -> all n rows in index
    order, on every process. For small per-example results (embeddings, predictions, labels),
    never images; the identity on one process."""
    local = np.asarray(local)
    if self.process_count == 1:
      return local
    count = len(self.share(n))
    if local.shape[0] != count:
      raise ValueError(f"{local.shape[0]} rows for a share of {count}")
    padded = np.zeros((self.share_size(n),) + local.shape[1:], _transferable(local.dtype))
    padded[:count] = local
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    every = np.asarray(multihost_utils.process_allgather(padded))  # [P, ceil(n / P), ...]
    return interleave(every, n).astype(local.dtype)

  def sum_over_processes(self, values):
    """A pytree of numpy arrays (each process its own) -> their elementwise sums, on every
    process (integers stay exact); the identity on one process."""
    if self.process_count == 1:
      return values
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    leaves, treedef = jax.tree.flatten(values)
    leaves = [np.asarray(leaf) for leaf in leaves]
    every = multihost_utils.process_allgather(
        [leaf.astype(_transferable(leaf.dtype)) for leaf in leaves])
    sums = [np.asarray(e).sum(axis=0, dtype=np.int64 if leaf.dtype.kind in "biu" else np.float64)
            for e, leaf in zip(every, leaves)]
    return jax.tree.unflatten(treedef, sums)

  # -- Embedding ----------------------------------------------------------------------------

  def _put(self, rows: np.ndarray) -> jax.Array:
    """Pads rows to batch_size and splits them over the batch axes (any process count)."""
    if rows.shape[0] < self.batch_size:
      pad = np.zeros((self.batch_size - rows.shape[0],) + rows.shape[1:], rows.dtype)
      rows = np.concatenate([rows, pad])
    sharding = parallel.batch_sharding(self.mesh)
    return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])

  def _put_local(self, rows: np.ndarray) -> jax.Array:
    """This process's rows of a batch, padded to its part of it, as the global batch."""
    if rows.shape[0] < self._local_batch:
      pad = np.zeros((self._local_batch - rows.shape[0],) + rows.shape[1:], rows.dtype)
      rows = np.concatenate([rows, pad])
    return jax.make_array_from_process_local_data(parallel.batch_sharding(self.mesh), rows,
                                                  (self.batch_size,) + rows.shape[1:])

  def _run(self, fn, variables, chunks: Iterable[np.ndarray], total: int | None,
           desc: str | None, unit: str, local_calls: int | None = None,
           empty: np.ndarray | None = None) -> np.ndarray:
    """Embeds the rows of `chunks` in batches.

    With `local_calls`, the chunks are this process's rows only: exactly `local_calls` device
    calls are made (padded with `empty`-shaped zero rows after the last chunk) and only this
    process's rows come back.
    """
    placed = self._place(variables)
    if local_calls is None:
      batches, put, read = _rechunk(chunks, self.batch_size), self._put, np.asarray
    else:
      batches = _exactly(_rechunk(chunks, self._local_batch), local_calls, empty)
      put, read = self._put_local, _local_rows
    outputs = []
    pending = None  # one batch in flight: the device works while the host prepares the next
    bar = _progress(total, desc, unit, self.progress)
    try:
      for chunk in batches:
        out = fn(placed, put(chunk))
        if pending is not None:
          outputs.append(read(pending[0])[:pending[1]])
          bar.update(pending[1])
        pending = (out, chunk.shape[0])
      if pending is not None:
        outputs.append(read(pending[0])[:pending[1]])
        bar.update(pending[1])
    finally:
      bar.close()
    if not outputs:
      return np.zeros((0, self.embed_dim), np.float32)
    return np.concatenate(outputs).astype(np.float32)

  def embed_images(self, variables, images: np.ndarray, desc: str | None = None) -> np.ndarray:
    """images uint8 [n, S, S, 3] (S = image_size) -> float32 [n, d] unit rows."""
    images = np.asarray(images)
    self._check_images(images)
    return self._run(self._image_fn, variables, [images], images.shape[0], desc, "img")

  def embed_image_batches(self, variables, batches: Iterable[np.ndarray], total: int | None = None,
                          desc: str | None = None) -> np.ndarray:
    """Like embed_images for a stream of uint8 [b_i, S, S, 3] arrays (any b_i) -> [sum b_i, d]."""

    def checked():
      for batch in batches:
        batch = np.asarray(batch)
        self._check_images(batch)
        yield batch

    return self._run(self._image_fn, variables, checked(), total, desc, "img")

  def embed_image_share(self, variables, batches: Iterable[np.ndarray], n: int,
                        desc: str | None = None) -> np.ndarray:
    """This process's share of an n-image set -> float32 [len(share(n)), d], in share order.

    `batches`: uint8 [b_i, S, S, 3] arrays (any b_i) holding the images `share(n)`, in that
    order, and nothing else. A collective on several processes: every process of the mesh
    calls it for the same n. On one process, `embed_image_batches`.
    """
    if self.process_count == 1:
      return self.embed_image_batches(variables, batches, total=n, desc=desc)
    count = len(self.share(n))

    def checked():
      for batch in batches:
        batch = np.asarray(batch)
        self._check_images(batch)
        yield batch

    calls = -(-self.share_size(n) // self._local_batch)
    empty = np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
    emb = self._run(self._image_share_fn, variables, checked(), count, desc, "img",
                    local_calls=calls, empty=empty)
    if emb.shape[0] != count:
      raise ValueError(f"got {emb.shape[0]} images for a share of {count} of {n}")
    return emb

  def embed_texts(self, variables, tokens: np.ndarray, desc: str | None = None) -> np.ndarray:
    """tokens int32 [n, L] (L = context_length) -> float32 [n, d] unit rows."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
      raise ValueError(f"expected tokens [n, {self.context_length}], got {tokens.shape}")
    return self._run(self._text_fn, variables, [tokens], tokens.shape[0], desc, "text")

  def embed_strings(self, variables, texts: Sequence[str], desc: str | None = None) -> np.ndarray:
    """Tokenises texts with CLIP's BPE (the model's context length) -> float32 [n, d]."""
    tokens = tokenizer.tokenize(list(texts), context_length=self.context_length)
    return self.embed_texts(variables, tokens, desc=desc)

  def _check_images(self, images: np.ndarray):
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images [n, {s}, {s}, 3], got {images.dtype} {images.shape}")


def interleave(shares: np.ndarray, n: int) -> np.ndarray:
  """[P, ceil(n / P), ...] rows of each process's share (`Embedder.share`, padded at the end)
  -> the n rows in index order: example p + P * j is row j of process p's share."""
  shares = np.asarray(shares)
  return shares.swapaxes(0, 1).reshape((-1,) + shares.shape[2:])[:n]


def _transferable(dtype) -> np.dtype:
  """The dtype a small host array travels in between processes (jax's default widths)."""
  dtype = np.dtype(dtype)
  if dtype.kind in "biu":
    return np.dtype(np.int32)
  return np.dtype(np.float32)


def _exactly(chunks: Iterator[np.ndarray], count: int, empty: np.ndarray) -> Iterator[np.ndarray]:
  """`count` items: the chunks, then `empty` for the missing ones; more chunks are an error."""
  for _ in range(count):
    yield next(chunks, empty)
  if next(chunks, None) is not None:
    raise ValueError(f"more rows than {count} device calls hold")


def _rechunk(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
  """Arrays of any row count -> arrays of exactly `size` rows (the last one may be shorter)."""
  buffer: list[np.ndarray] = []
  held = 0
  for chunk in chunks:
    while chunk.shape[0]:
      take = min(size - held, chunk.shape[0])
      buffer.append(chunk[:take])
      held += take
      chunk = chunk[take:]
      if held == size:
        yield buffer[0] if len(buffer) == 1 else np.concatenate(buffer)
        buffer, held = [], 0
  if held:
    yield buffer[0] if len(buffer) == 1 else np.concatenate(buffer)


class _NoBar:
  def update(self, n):
    del n

  def close(self):
    pass


def _progress(total: int | None, desc: str | None, unit: str, enabled: bool):
  """A tqdm bar for one dataset (only on the first process), or a stand-in."""
  if not enabled or desc is None or jax.process_index() != 0:
    return _NoBar()
  try:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _NoBar()
  return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


# -- Embedding whole evaluation sets -------------------------------------------------------


def embed_labelled_share(embedder: Embedder, variables, source, desc: str | None = None,
                         num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """This process's share (`embedder.share(len(source))`) of a sources.ClassificationSource:
  (image embeddings [c, d], int32 labels [c]). Each process reads and decodes only its share."""
  from cloob_jax.evaluators import sources  # pylint: disable=g-import-not-at-top
  n = len(source)
  share = embedder.share(n)
  ready = source.arrays(embedder.image_size)
  if ready is not None:
    images, labels = ready
    if len(share) != n:
      images, labels = np.asarray(images)[share], np.asarray(labels)[share]
    return (embedder.embed_image_share(variables, [images], n, desc=desc),
            np.asarray(labels, np.int32))
  labels: list[int] = []
  batches = sources.image_batches(lambda j: source.get(int(share[j])), len(share),
                                  embedder.image_size, embedder.batch_size, num_threads,
                                  targets=labels)
  emb = embedder.embed_image_share(variables, batches, n, desc=desc)
  return emb, np.asarray(labels, np.int32)


def embed_labelled(embedder: Embedder, variables, source, desc: str | None = None,
                   num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Image embeddings and labels of a whole sources.ClassificationSource: ([n, d], int32 [n]),
  on every process (each embeds its share; the embeddings and labels are gathered)."""
  emb, labels = embed_labelled_share(embedder, variables, source, desc, num_threads)
  n = len(source)
  return embedder.gather(emb, n), embedder.gather(labels, n)


def embed_captioned(embedder: Embedder, variables, source, desc: str | None = None,
                    num_threads: int | None = None):
  """Embeddings of a sources.RetrievalSource's images and of all their captions.

  Each process embeds its share of the images and the embeddings are gathered; every process
  embeds all the captions (tokenising them is cheap; each device encodes its rows).

  Returns:
    images [n, d], captions [m, d] (every caption of image 0, then of image 1, ...), and
    int [m], the image index of each caption; the same on every process.
  """
  from cloob_jax.evaluators import sources  # pylint: disable=g-import-not-at-top
  n = len(source)
  share = embedder.share(n)
  ready = source.arrays(embedder.image_size)
  if ready is not None:
    images = np.asarray(ready) if len(share) == n else np.asarray(ready)[share]
    image_emb = embedder.embed_image_share(variables, [images], n, desc=desc)
  else:
    batches = sources.image_batches(lambda j: source.get(int(share[j])), len(share),
                                    embedder.image_size, embedder.batch_size, num_threads)
    image_emb = embedder.embed_image_share(variables, batches, n, desc=desc)
  image_emb = embedder.gather(image_emb, n)
  texts = [c for caps in source.captions for c in caps]
  text_image = np.repeat(np.arange(len(source.captions)), [len(c) for c in source.captions])
  text_emb = embedder.embed_strings(variables, texts,
                                    desc=None if desc is None else f"{desc} captions")
  return image_emb, text_emb, text_image
