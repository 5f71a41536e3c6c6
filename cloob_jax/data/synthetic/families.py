"""The family shuffle: a training order that keeps families of consecutive records whole.

`SyntheticWorld(family_size=k).train_shuffle` uses it, so that every batch holds the world's
minimal pairs (see `source`). It knows nothing else of the world: any source whose families
are runs of `family_size` consecutive records can be shuffled this way.
"""

from __future__ import annotations

import grain


class _FamilyShuffle(grain.MapDataset):
  """An endless shuffle that moves families of `family_size` consecutive records as units.

  Family f is records [f * family_size, (f + 1) * family_size); families are reshuffled every
  epoch and keep their members together and in order, so each global batch (a multiple of
  family_size) holds whole families.
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


def shuffle_families(ds: grain.MapDataset, family_size: int, *, seed: int,
                     global_batch_size: int, num_workers: int) -> grain.MapDataset:
  """`ds` as an endless stream of whole families, reshuffled every epoch.

  What a source with families returns from its `train_shuffle` hook (see
  `pipeline.create_train_dataset`).

  Raises:
    ValueError: when global batches cannot hold whole families: global_batch_size is not a
      multiple of family_size, or several grain worker processes (num_workers > 1) would
      each batch a strided slice of the stream (one worker batches the whole stream, in
      order); or when `ds` has no whole family.
  """
  if global_batch_size % family_size:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the source's "
                     f"family_size {family_size}")
  if family_size > 1 and num_workers > 1:
    raise ValueError(f"a source with family_size {family_size} needs num_workers <= 1, got "
                     f"{num_workers}: grain workers each batch a strided slice of the stream, "
                     "which would split the families")
  return _FamilyShuffle(ds, family_size, seed)
