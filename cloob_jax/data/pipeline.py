"""grain input pipelines: a seeded global shuffle, sharded per process, decoded,
augmented and tokenised in worker processes, batched as uint8 images + int32 tokens.

Train (`create_train_dataset`), per process:

  source -> seed -> shuffle -> repeat (reshuffled each epoch; a source with a
         `family_size` > 1 is shuffled in whole families, see _FamilyShuffle)
         -> preprocess (per-record RNG from (seed, global position))
         -> [process_index::process_count] -> read threads
         -> batch of `local_batch` good records, skipping bad ones
         -> mp_prefetch(num_workers)

  batch = {'image': uint8 [b, S, S, 3], 'tokens': int32 [b, L],
           'skipped': int32 [b, len(records.REASONS)]}

A record that fails to decode at read time (or whose caption is bad) is not an
error: it is dropped, and the next good record takes its place. Each good
element carries the counts of the bad records dropped just before it, so the
counts survive the trip from worker processes to the trainer inside the
batches themselves; `skip_counts(batch)` sums them by reason. `skipped` is host
bookkeeping: pop it before putting the batch on device.

Augmentation randomness is a function of (seed, global stream position), so
pipelines are reproducible, and an iterator restored with `set_state()` (or
orbax via `grain.checkpoint.CheckpointRestore`) continues with exactly the next
batch. The batch contents depend on `num_workers` (each worker batches its own
slice), so resume with the same `num_workers`.

Sources: `records.ImageTextSource` ({'image_bytes', 'caption', 'key'}: decoded,
cropped and resized in one step by `records.decode_crop`, with simplejpeg and OpenCV
for JPEGs when installed, `decoder="pillow"` for Pillow throughout) or any
random-access source of {'image': uint8 [H, W, 3], 'caption': str} (e.g.
`synthetic.SyntheticWorld`: used as is when already S x S, else resized and
centre-cropped; pass `augment_arrays=True` to augment them too).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from cloob_jax.data import records
from cloob_jax.data import transforms

NUM_REASONS = len(records.REASONS)
MAX_CONSECUTIVE_BAD = 10_000  # then the pipeline raises instead of skipping
_BAD = "_bad"  # key of the marker element that replaces a bad record
_NON_LABEL_FIELDS = ("image", "image_bytes", "caption", "key")


def skip_counts(batch: Mapping[str, Any]) -> dict[str, int]:
  """{reason: count} of the records skipped while building `batch` (nonzero only)."""
  totals = np.asarray(batch["skipped"]).reshape(-1, NUM_REASONS).sum(axis=0)
  return {r: int(c) for r, c in zip(records.REASONS, totals) if c}


def _default_processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


class _GuardedSource:
  """Wraps a source so that a record that cannot even be read becomes a bad marker."""

  def __init__(self, source):
    self._source = source
    self._warned = False

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    try:
      return self._source[index]
    except Exception as e:  # pylint: disable=broad-except
      if not self._warned:  # one line per process is enough; counts go in batches
        logging.warning("unreadable record %s: %s: %s", index, type(e).__name__, e)
        self._warned = True
      return {_BAD: "corrupt"}

  def __repr__(self) -> str:
    return f"_GuardedSource({self._source!r})"


class _Preprocess:
  """record -> {'image': uint8 [S, S, 3], 'caption': str, labels...} or a bad marker."""

  def __init__(self, image_size: int, *, train: bool, scale, ratio, augment_arrays: bool,
               jpeg_draft: bool, max_pixels: int, min_side: int,
               keep_labels: Sequence[str] = (), decoder: str = "auto"):
    self.image_size = image_size
    self.train = train
    self.scale, self.ratio = tuple(scale), tuple(ratio)
    self.augment_arrays = augment_arrays
    self.jpeg_draft = jpeg_draft
    self.decoder = decoder
    self.max_pixels, self.min_side = max_pixels, min_side
    self.keep_labels = tuple(keep_labels)

  def __call__(self, record, rng: np.random.Generator | None) -> dict[str, Any]:
    if _BAD in record:
      return record
    s = self.image_size
    try:
      caption = records.clean_caption(record.get("caption"))
      if "image_bytes" in record:
        if self.train:  # the crop is drawn from the header's size, before decoding
          box_fn = lambda h, w: transforms.random_resized_crop_box(h, w, rng, self.scale,
                                                                   self.ratio)
        else:
          box_fn = transforms.center_crop_box
        image = records.decode_crop(
            record["image_bytes"], s, box_fn, decoder=self.decoder, scaled=self.jpeg_draft,
            max_pixels=self.max_pixels, min_side=self.min_side)
      else:
        image = np.asarray(record["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
          raise records.BadRecord("corrupt", f"image {image.dtype} {image.shape}")
        if self.train and self.augment_arrays:
          image = transforms.random_resized_crop(image, s, rng, scale=self.scale,
                                                 ratio=self.ratio)
        else:
          image = transforms.resize_center_crop(image, s)  # returns S x S arrays as is
    except records.BadRecord as e:
      return {_BAD: e.reason}
    out = {"image": image, "caption": caption}
    out.update((k, record[k]) for k in self.keep_labels)
    return out


class _TrainPreprocess(grain.transforms.RandomMap):

  def __init__(self, preprocess: _Preprocess):
    self._preprocess = preprocess

  def random_map(self, element, rng: np.random.Generator):
    return self._preprocess(element, rng)


class _Collate:
  """Stacks good elements and tokenises their captions in one call."""

  def __init__(self, context_length: int):
    self.context_length = context_length

  def __call__(self, elements: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    from cloob_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
    batch = {"image": np.stack([e["image"] for e in elements]),
             "tokens": tokenizer.tokenize([e["caption"] for e in elements],
                                          self.context_length).astype(np.int32)}
    for k in elements[0]:
      if k not in ("image", "caption"):
        batch[k] = np.stack([np.asarray(e[k]) for e in elements])
    return batch


class _SkipBadBatchIterator(grain.DatasetIterator):
  """Pulls until `batch_size` good elements; bad ones become `skipped` counts."""

  def __init__(self, parent: grain.DatasetIterator, batch_size: int,
               collate: Callable[[Sequence[Any]], dict[str, np.ndarray]]):
    super().__init__(parent)
    self._batch_size = batch_size
    self._collate = collate

  def __next__(self) -> dict[str, np.ndarray]:
    good, skipped = [], np.zeros((self._batch_size, NUM_REASONS), np.int32)
    bad_run = 0
    while len(good) < self._batch_size:
      element = next(self._parent)  # StopIteration: a partial batch is dropped
      if _BAD in element:
        skipped[len(good), records.REASON_INDEX[element[_BAD]]] += 1
        bad_run += 1
        if bad_run >= MAX_CONSECUTIVE_BAD:  # an infinite stream would spin forever
          raise RuntimeError(
              f"{bad_run} bad records in a row: {skip_counts({'skipped': skipped})}; "
              "is the source readable and are decode limits right?")
      else:
        good.append(element)
        bad_run = 0
    batch = self._collate(good)
    batch["skipped"] = skipped
    return batch

  # Bad elements are consumed within one __next__, so between batches the
  # parent's position is the whole state.
  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class _SkipBadBatchIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, batch_size: int,
               collate: Callable[[Sequence[Any]], dict[str, np.ndarray]]):
    super().__init__(parent)
    self._batch_size = batch_size
    self._collate = collate

  def __iter__(self) -> _SkipBadBatchIterator:
    return _SkipBadBatchIterator(self._parent.__iter__(), self._batch_size, self._collate)

  def __str__(self) -> str:
    return f"SkipBadBatchIterDataset(batch_size={self._batch_size})"


class _FamilyShuffle(grain.MapDataset):
  """An endless shuffle that moves families of `family_size` consecutive records as units.

  Family f is records [f * family_size, (f + 1) * family_size); families are reshuffled every
  epoch and keep their members together and in order, so each global batch (a multiple of
  family_size) holds whole families: the synthetic world's minimal pairs
  (`SyntheticWorld(family_size=)`).
  """

  def __init__(self, parent: grain.MapDataset, family_size: int, seed: int):
    super().__init__(parent)
    self._size = family_size
    self._families = (grain.MapDataset.range(len(parent) // family_size)
                      .shuffle(seed=seed).repeat())
    if not len(self._families):
      raise ValueError(f"a source of {len(parent)} records has no whole family of "
                       f"{family_size}")

  def __len__(self) -> int:
    return len(self._families)  # endless, as repeat()

  def __str__(self) -> str:
    return f"_FamilyShuffle(family_size={self._size})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    family = self._families[index // self._size]
    return self._parent[family * self._size + index % self._size]


def create_train_dataset(
    source,
    *,
    global_batch_size: int,
    image_size: int,
    context_length: int = 77,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    read_threads: int | None = None,
    prefetch_buffer_size: int = 256,
    scale: tuple[float, float] = transforms.TRAIN_SCALE,
    ratio: tuple[float, float] = transforms.TRAIN_RATIO,
    augment_arrays: bool = False,
    jpeg_draft: bool = True,
    max_pixels: int = records.DEFAULT_MAX_PIXELS,
    min_side: int = records.DEFAULT_MIN_SIDE,
    worker_buffer_size: int = 1,
    decoder: str = "auto",
) -> grain.IterDataset:
  """The infinite training stream of this process's batches.

  Args:
    source: random-access source of {'image_bytes' | 'image', 'caption', ...}.
    global_batch_size: batch over all processes; each gets
      global_batch_size // process_count rows.
    image_size: S of the uint8 [S, S, 3] output images.
    context_length: L of the int32 [L] token rows.
    seed: shuffle and augmentation seed.
    process_index, process_count: default to jax's.
    num_workers: grain worker processes (0: decode in this process's threads).
    read_threads: threads per process (or per worker) running decode + augment;
      default 8 without workers, 2 per worker (workers are the main parallelism:
      PIL releases the GIL in decode and resize, but not in the glue around them).
    prefetch_buffer_size: elements read ahead by those threads.
    scale, ratio: random-resized-crop area fraction and aspect range.
    augment_arrays: also random-crop sources that give ready uint8 images.
    jpeg_draft: decode JPEGs at a reduced DCT scale at which the crop is still >= S.
    max_pixels, min_side: limits for decode_image.
    worker_buffer_size: batches buffered per worker process.
    decoder: "auto" (simplejpeg + OpenCV for JPEGs when installed, Pillow for the
      rest) or "pillow"; see records.decode_crop.

  Returns:
    a grain IterDataset; `iter()` gives a checkpointable DatasetIterator of
    {'image': uint8 [b, S, S, 3], 'tokens': int32 [b, L], 'skipped': int32 [b, R]}.
  """
  process_index, process_count = _default_processes(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                     f"process_count {process_count}")
  if len(source) == 0:
    raise ValueError("empty source")
  local_batch = global_batch_size // process_count
  preprocess = _Preprocess(image_size, train=True, scale=scale, ratio=ratio,
                           augment_arrays=augment_arrays, jpeg_draft=jpeg_draft,
                           max_pixels=max_pixels, min_side=min_side, decoder=decoder)
  family_size = int(getattr(source, "family_size", 1))
  if global_batch_size % family_size:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the source's "
                     f"family_size {family_size} ({source!r})")
  if family_size > 1 and num_workers > 0:
    raise ValueError(f"a source with family_size {family_size} needs num_workers=0, got "
                     f"{num_workers}: grain workers each batch a strided slice of the stream, "
                     "which would split the families")
  ds = grain.MapDataset.source(_GuardedSource(source)).seed(seed)
  if family_size == 1:
    ds = ds.shuffle().repeat()  # repeat reseeds the shuffle for every epoch
  else:
    ds = _FamilyShuffle(ds, family_size, seed)
  # Mapped before slicing, so a record's crop depends on its global position only (not on
  # process_count); the map runs lazily, for this slice only.
  ds = ds.random_map(_TrainPreprocess(preprocess))[process_index::process_count]
  if read_threads is None:
    read_threads = 2 if num_workers > 0 else 8
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch_buffer_size))
  ds = _SkipBadBatchIterDataset(ds, local_batch, _Collate(context_length))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_size))
  return ds


def create_train_iterator(source, **kwargs) -> grain.DatasetIterator:
  """`iter(create_train_dataset(source, **kwargs))`: supports get_state/set_state."""
  return iter(create_train_dataset(source, **kwargs))


class _EvalSlice:
  """This process's strided slice of a source as (index, record), padded to
  `length` with (-1, None) (not None: grain treats None as a filtered element)."""

  def __init__(self, source, start: int, step: int, length: int):
    self._source, self._start, self._step, self._length = source, start, step, length
    self._n = len(range(start, len(source), step))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i):
    i = int(i)
    if i >= self._n:
      return -1, None
    index = self._start + i * self._step
    try:
      record = self._source[index]
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("unreadable record %s: %s: %s", index, type(e).__name__, e)
      record = {_BAD: "corrupt"}
    return index, record


class _EvalPreprocess(grain.transforms.Map):
  """(index, record | None) -> element with 'mask', 'index' and 'skipped'."""

  def __init__(self, preprocess: _Preprocess, pad: dict[str, np.ndarray]):
    self._preprocess = preprocess
    self._pad = pad  # an all-zero element with the shapes of a good one

  def map(self, item):
    skipped = np.zeros(NUM_REASONS, np.int32)
    index, record = item
    if record is None:
      return dict(self._pad, index=np.int64(-1), mask=False, skipped=skipped)
    out = self._preprocess(record, None)
    if _BAD in out:
      skipped[records.REASON_INDEX[out[_BAD]]] = 1
      return dict(self._pad, index=np.int64(index), mask=False, skipped=skipped)
    return dict(out, index=np.int64(index), mask=True, skipped=skipped)


def create_eval_dataset(
    source,
    *,
    global_batch_size: int,
    image_size: int,
    context_length: int = 77,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    read_threads: int = 4,
    keep_labels: bool = True,
    jpeg_draft: bool = True,
    max_pixels: int = records.DEFAULT_MAX_PIXELS,
    min_side: int = records.DEFAULT_MIN_SIDE,
    decoder: str = "auto",
) -> grain.IterDataset:
  """One in-order pass over `source`, every record once, in padded batches.

  Process p takes records p, p + process_count, ...; every process yields the
  same number of batches (ceil(ceil(n / process_count) / b)), padded at the end.
  Images get the eval transform (bicubic short-side resize, centre crop).

  Returns:
    an IterDataset of {'image': uint8 [b, S, S, 3], 'tokens': int32 [b, L],
    'mask': bool [b] (False for padding and bad records), 'index': int64 [b]
    (position in `source`, -1 for padding), 'skipped': int32 [b, R], and, with
    `keep_labels`, the source's other (numeric) fields, e.g. the synthetic
    world's labels}.
  """
  process_index, process_count = _default_processes(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                     f"process_count {process_count}")
  n = len(source)
  local_batch = global_batch_size // process_count
  per_process = -(-n // process_count)
  num_batches = -(-per_process // local_batch)
  preprocess = _Preprocess(image_size, train=False, scale=(1, 1), ratio=(1, 1),
                           augment_arrays=False, jpeg_draft=jpeg_draft,
                           max_pixels=max_pixels, min_side=min_side, decoder=decoder)
  pad = {"image": np.zeros((image_size, image_size, 3), np.uint8), "caption": "pad"}
  if keep_labels and n:
    first = source[0]  # label shapes for padding elements
    pad.update((k, np.zeros_like(np.asarray(v))) for k, v in first.items()
               if k not in _NON_LABEL_FIELDS and np.asarray(v).dtype.kind in "biuf")
    preprocess.keep_labels = tuple(k for k in pad if k not in ("image", "caption"))
  ds = grain.MapDataset.source(
      _EvalSlice(source, process_index, process_count, num_batches * local_batch))
  ds = ds.map(_EvalPreprocess(preprocess, pad))
  ds = ds.batch(local_batch, batch_fn=_Collate(context_length))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
