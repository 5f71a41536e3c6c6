"""The grain training pipeline: a seeded global shuffle, sharded per process, decoded,
augmented and tokenised in worker processes, batched as uint8 images + int32 tokens.

`create_train_dataset`, per process:

  source -> seed -> shuffle -> repeat (reshuffled each epoch; or the source's own
         order, see "A source's own order" below)
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

A source's own order: a source with a method

  train_shuffle(ds, *, seed, global_batch_size, num_workers) -> grain.MapDataset

is given `ds`, the seeded MapDataset of its records (unreadable ones already turned into
bad markers), and returns the endless stream to train on, reshuffled every epoch and a
pure function of `seed`; it raises ValueError for a batch layout that cannot keep its
order. The pipeline then maps, slices per process and batches that stream as it would
its own shuffle. Without the method: grain's global shuffle, repeated. (The synthetic
world keeps its families of minimal pairs whole this way: `synthetic.families`.)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from cloob_jax.data import records
from cloob_jax.data import transforms

NUM_REASONS = len(records.REASONS)
MAX_CONSECUTIVE_BAD = 10_000  # then the pipeline raises instead of skipping
_BAD = "_bad"  # key of the marker element that replaces a bad record


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
  """record -> {'image': uint8 [S, S, 3], 'caption': str} or a bad marker."""

  def __init__(self, image_size: int, *, train: bool, scale, ratio, augment_arrays: bool,
               jpeg_draft: bool, max_pixels: int, min_side: int, decoder: str = "auto"):
    self.image_size = image_size
    self.train = train
    self.scale, self.ratio = tuple(scale), tuple(ratio)
    self.augment_arrays = augment_arrays
    self.jpeg_draft = jpeg_draft
    self.decoder = decoder
    self.max_pixels, self.min_side = max_pixels, min_side

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
    return {"image": image, "caption": caption}


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


def _parse_flags_for_grain() -> None:
  """Lets grain's worker processes start outside `absl.app.run` (a notebook, a script).

  grain reads its absl flags when it starts workers and raises UnparsedFlagAccessError if
  nothing parsed them; a program under `app.run` has, otherwise its defaults are used.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _exit_with_parent(builder: int, worker_index: int, worker_count: int) -> None:
  """grain's worker_init_fn (after `builder`, the pid that built the pipeline): the worker
  exits within a second of its parent's death.

  A trainer killed outright (SIGKILL, the OOM killer) cannot stop its workers, and grain's
  outlive it, holding memory; the rerun that resumes it starts its own. A worker whose
  parent died while it was starting (it has been re-parented, and the builder is gone) exits
  at once.
  """
  del worker_index, worker_count
  parent = os.getppid()
  if parent != builder:
    try:
      os.kill(builder, 0)  # signal 0: does the process exist?
    except ProcessLookupError:
      os._exit(1)  # pylint: disable=protected-access
    except PermissionError:
      pass  # it exists (another user's pid now): watch the parent we have

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


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
    source: random-access source of {'image_bytes' | 'image', 'caption', ...}, optionally
      with its own training order (`source.train_shuffle`, see the module docstring).
    global_batch_size: batch over all processes; each gets
      global_batch_size // process_count rows.
    image_size: S of the uint8 [S, S, 3] output images.
    context_length: L of the int32 [L] token rows.
    seed: shuffle and augmentation seed.
    process_index, process_count: default to jax's.
    num_workers: grain worker processes (0: decode in this process's threads). Each worker
      batches a strided slice of the stream, so 1 worker gives the same batches as 0.
      Workers start outside `absl.app.run` too (grain's flags then keep their defaults).
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
      rest), "fast" (the same with plain chroma upsampling) or "pillow"; see
      records.decode_crop.

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
  ds = grain.MapDataset.source(_GuardedSource(source)).seed(seed)
  train_shuffle = getattr(source, "train_shuffle", None)
  if train_shuffle is None:
    ds = ds.shuffle().repeat()  # repeat reseeds the shuffle for every epoch
  else:  # the source's own order (see the module docstring)
    ds = train_shuffle(ds, seed=seed, global_batch_size=global_batch_size,
                       num_workers=num_workers)
  # Mapped before slicing, so a record's crop depends on its global position only (not on
  # process_count); the map runs lazily, for this slice only.
  ds = ds.random_map(_TrainPreprocess(preprocess))[process_index::process_count]
  if read_threads is None:
    read_threads = 2 if num_workers > 0 else 8
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch_buffer_size))
  ds = _SkipBadBatchIterDataset(ds, local_batch, _Collate(context_length))
  if num_workers > 0:
    _parse_flags_for_grain()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_size),
        worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
  return ds


def create_train_iterator(source, **kwargs) -> grain.DatasetIterator:
  """`iter(create_train_dataset(source, **kwargs))`: supports get_state/set_state."""
  return iter(create_train_dataset(source, **kwargs))
