"""What every evaluator shares: the `Embedder` (jitted sharded towers), base class, registry.

    embedder = Embedder(module, batch_size=256)           # mesh: parallel.make_mesh()
    img = embedder.embed_images(variables, uint8_images)   # np.float32 [n, d]
    txt = embedder.embed_strings(variables, ["a photo of a cat."])

An evaluator is a class registered under a type name and built from a config entry
`ConfigDict(type=..., log_steps=..., **kwargs)` by `evaluators.build(name, config, embedder)`.
Its `run(variables)` yields `(metric_name, value)` pairs named `'{task}/{metric}'`, where the
task is the evaluator's name (e.g. `colour/top1`). The trainer knows nothing about any evaluator.
"""

from __future__ import annotations

import abc
import functools
import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from cloob_jax import parallel
from cloob_jax.data import tokenizer
from cloob_jax.data import transforms

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
def _encoders(module, mesh: jax.sharding.Mesh):
  """Jitted image and text encoders for a (hashable) linen module on a mesh; shared by embedders."""
  batch = parallel.batch_sharding(mesh)
  replicated = parallel.replicated_sharding(mesh)

  def images_fn(variables, images):
    # uint8 in, normalised on device: 4x less host-to-device traffic than float32.
    return module.apply(variables, transforms.normalize(images), method=module.encode_image)

  def texts_fn(variables, tokens):
    return module.apply(variables, tokens, method=module.encode_text)

  kwargs = dict(in_shardings=(replicated, batch), out_shardings=replicated)
  return jax.jit(images_fn, **kwargs), jax.jit(texts_fn, **kwargs)


class Embedder:
  """Embeds images and texts with a two-tower module, in fixed-size batches over a mesh.

  Each tower is compiled once (per module and mesh, shared between embedders): inputs are
  padded to `batch_size` rows (rounded up to a multiple of the mesh's 'data' axis) and split
  over that axis; variables are replicated. Every process passes the whole batch and gets all
  embeddings back, so it also runs under several processes (each then loads every example).

  Attributes:
    image_size: side S of the square images the model takes.
    embed_dim: d, the width of the embeddings.
    context_length: token length L of the text tower.
    batch_size: rows per device call.
  """

  def __init__(self, module, *, batch_size: int = 256, mesh: jax.sharding.Mesh | None = None,
               progress: bool = True):
    self.module = module
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    shards = parallel.axis_size(self.mesh, "data")
    self.batch_size = -(-int(batch_size) // shards) * shards
    self.image_size = int(module.visual.image_size)
    self.context_length = int(module.text.context_length)
    self.embed_dim = int(module.text.embed_dim)
    self.progress = progress
    self._image_fn, self._text_fn = _encoders(module, self.mesh)
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

  # -- Embedding ----------------------------------------------------------------------------

  def _put(self, rows: np.ndarray) -> jax.Array:
    """Pads rows to batch_size and splits them over the 'data' axis (any process count)."""
    if rows.shape[0] < self.batch_size:
      pad = np.zeros((self.batch_size - rows.shape[0],) + rows.shape[1:], rows.dtype)
      rows = np.concatenate([rows, pad])
    sharding = parallel.batch_sharding(self.mesh)
    return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])

  def _run(self, fn, variables, chunks: Iterable[np.ndarray], total: int | None,
           desc: str | None, unit: str) -> np.ndarray:
    placed = self._place(variables)
    outputs = []
    pending = None  # one batch in flight: the device works while the host prepares the next
    bar = _progress(total, desc, unit, self.progress)
    try:
      for chunk in _rechunk(chunks, self.batch_size):
        out = fn(placed, self._put(chunk))
        if pending is not None:
          outputs.append(np.asarray(pending[0])[:pending[1]])
          bar.update(pending[1])
        pending = (out, chunk.shape[0])
      if pending is not None:
        outputs.append(np.asarray(pending[0])[:pending[1]])
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


def embed_labelled(embedder: Embedder, variables, source, desc: str | None = None,
                   num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Image embeddings and labels of a sources.ClassificationSource: ([n, d], int32 [n])."""
  from cloob_jax.evaluators import sources  # pylint: disable=g-import-not-at-top
  ready = source.arrays(embedder.image_size)
  if ready is not None:
    images, labels = ready
    return embedder.embed_images(variables, images, desc=desc), np.asarray(labels, np.int32)
  labels: list[int] = []
  batches = sources.image_batches(source.get, len(source), embedder.image_size,
                                  embedder.batch_size, num_threads, targets=labels)
  emb = embedder.embed_image_batches(variables, batches, total=len(source), desc=desc)
  return emb, np.asarray(labels, np.int32)


def embed_captioned(embedder: Embedder, variables, source, desc: str | None = None,
                    num_threads: int | None = None):
  """Embeddings of a sources.RetrievalSource's images and of all their captions.

  Returns:
    images [n, d], captions [m, d] (every caption of image 0, then of image 1, ...), and
    int [m], the image index of each caption.
  """
  from cloob_jax.evaluators import sources  # pylint: disable=g-import-not-at-top
  ready = source.arrays(embedder.image_size)
  if ready is not None:
    image_emb = embedder.embed_images(variables, ready, desc=desc)
  else:
    batches = sources.image_batches(source.get, len(source), embedder.image_size,
                                    embedder.batch_size, num_threads)
    image_emb = embedder.embed_image_batches(variables, batches, total=len(source), desc=desc)
  texts = [c for caps in source.captions for c in caps]
  text_image = np.repeat(np.arange(len(source.captions)), [len(c) for c in source.captions])
  text_emb = embedder.embed_strings(variables, texts,
                                    desc=None if desc is None else f"{desc} captions")
  return image_emb, text_emb, text_image
