"""Fine-tuning data: a labelled source, a deterministic train/val split, a checkpointable stream.

`config.data.train` is any classification data config of the eval sources
(`evaluators.sources`: a synthetic task, a class folder, CLIP_benchmark tars, TFDS). The
validation split is `config.data.val` when given (a separate split of the same dataset, e.g.
`split='test'`), else a seeded permutation of the train source: its first
round(val_fraction * n) indices are held out (sorted), the rest train.

The train stream is a grain pipeline: the train indices, shuffled with `config.seed` and
reshuffled every epoch, this process's slice of every global batch, the eval transform
(bicubic resize + centre crop; no augmentation), batched as

  {'image': uint8 [b, S, S, 3], 'label': int32 [b]}      (+ 'tokens': int32 [b, L] for FLYP)

FLYP's caption of an example is one of the source's templates filled with its class name,
picked by grain's per-element RNG (a function of the seed and the stream position). The
iterator's state is its position, saved beside the train state (`checkpoint.Checkpointer`),
so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from cloob_jax import config_lib
from cloob_jax.data import transforms
from cloob_jax.evaluators import prompts
from cloob_jax.evaluators import sources
from cloob_jax.evaluators.sources import base as source_base


@dataclasses.dataclass(frozen=True)
class Splits:
  train: sources.ClassificationSource
  val: sources.ClassificationSource
  classnames: tuple[str, ...]
  templates: tuple[str, ...]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) indices of n examples: a seeded permutation, val its first part (sorted)."""
  if not 0 < val_fraction < 1:
    raise ValueError(f"config.data.val_fraction must be in (0, 1), got {val_fraction}")
  perm = np.random.default_rng([seed, 0x5B17]).permutation(n)
  k = int(round(val_fraction * n))
  if k < 1 or k >= n:
    raise ValueError(f"config.data.val_fraction={val_fraction} of {n} examples leaves an empty "
                     "split")
  return np.sort(perm[k:]), np.sort(perm[:k])


def load_splits(data_config, image_size: int) -> Splits:
  """The train and validation sources of `config.data` at the model's image size."""
  train_cfg = config_lib.as_dict(data_config.train)
  val_cfg = config_lib.as_dict(data_config.get("val"))
  base = sources.classification_source(train_cfg, image_size, "train")
  if val_cfg:
    train, val = base, sources.classification_source(val_cfg, image_size, "val")
    if tuple(val.classnames) != tuple(base.classnames):
      raise ValueError("config.data.val has other class names than config.data.train: "
                       f"{list(val.classnames)[:5]}... vs {list(base.classnames)[:5]}...")
  else:
    train_idx, val_idx = split_indices(len(base), float(data_config.val_fraction),
                                       int(data_config.split_seed))
    train, val = (source_base.Subset(base, np.asarray(train_idx, np.int64)),
                  source_base.Subset(base, np.asarray(val_idx, np.int64)))
  if len(train) == 0 or len(val) == 0:
    raise ValueError(f"empty split: {len(train)} train and {len(val)} val examples")
  return Splits(train, val, tuple(base.classnames), tuple(base.templates))


class _Examples:
  """Random access to the train source: index -> {'image': uint8 [S, S, 3], 'label': int32}."""

  def __init__(self, source: sources.ClassificationSource, image_size: int):
    self._source = source
    self._size = image_size
    self._arrays = source.arrays(image_size)  # in memory (synthetic): no per-example decode

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    index = int(index)
    if self._arrays is not None:
      image, label = self._arrays[0][index], self._arrays[1][index]
    else:
      image, label = self._source.get(index)
    return {"image": transforms.resize_center_crop(image, self._size),
            "label": np.int32(label)}


class _Caption(grain.transforms.RandomMap):
  """Adds FLYP's caption: a random template of the source filled with the class name."""

  def __init__(self, classnames: Sequence[str], templates: Sequence[str]):
    self._classnames = tuple(classnames)
    self._templates = tuple(templates)

  def random_map(self, element, rng: np.random.Generator):
    template = self._templates[int(rng.integers(len(self._templates)))]
    return dict(element, caption=prompts.fill(template, self._classnames[int(element["label"])]))


class _Collate:

  def __init__(self, context_length: int | None):
    self._context_length = context_length

  def __call__(self, elements):
    batch = {"image": np.stack([e["image"] for e in elements]),
             "label": np.asarray([e["label"] for e in elements], np.int32)}
    if self._context_length is not None:
      from cloob_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
      batch["tokens"] = tokenizer.tokenize([e["caption"] for e in elements],
                                           self._context_length).astype(np.int32)
    return batch


def create_train_iterator(splits: Splits, *, global_batch_size: int, image_size: int, seed: int,
                          context_length: int | None = None, process_index: int | None = None,
                          process_count: int | None = None,
                          read_threads: int = 4) -> grain.DatasetIterator:
  """The endless train stream of this process's batches; `context_length` adds FLYP tokens."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {process_count} "
                     "processes")
  local_batch = global_batch_size // process_count
  ds = grain.MapDataset.source(_Examples(splits.train, image_size)).seed(seed)
  ds = ds.shuffle().repeat()  # repeat reseeds the shuffle for every epoch
  if context_length is not None:
    ds = ds.random_map(_Caption(splits.classnames, splits.templates))
  ds = ds[process_index::process_count]
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_Collate(context_length))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4))
  return iter(ds)
