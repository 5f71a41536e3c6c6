"""`SyntheticWorld`: the synthetic world as a grain random-access source of examples.

Example fields (`SyntheticWorld.__getitem__`), labels are int32 scalars of the main object:
  'image':    uint8 [H, W, 3].
  'caption':  str.
  'colour':   index into COLOURS.      'shape':    index into SHAPES.
  'size':     index into SIZES (0 small, 1 large).
  'position': index into POSITIONS (3x3 grid cell, row-major: 0 top left ... 8 bottom right).
  'count':    number of objects in the scene, 1..MAX_OBJECTS (not an index).
  'combo':    colour * len(SHAPES) + shape.
  'heldout_combo': index into HELDOUT_COMBOS, or -1 if the combination is not held out.
  'background': index into BACKGROUNDS.
  'object_colour', 'object_shape', 'object_size', 'object_position':
              int32 [MAX_OBJECTS], per object, padded with -1.

Families (`SyntheticWorld(family_size=k)`, `--config.data.family_size=k`): records come in
families of k consecutive examples that share their colours, grid cells, count and background
and differ in every object's shape and, by chance, size (`scenes.family_member`). The world
gives the training pipeline its own order (`SyntheticWorld.train_shuffle`, which shuffles
whole families: `families.shuffle_families`), so every batch holds minimal pairs that colour
and position cannot tell apart: in a batch of random scenes, colour and position alone
separate almost every pair, and contrastive training has no reason to learn shape.

Everything is a pure function of (seed, split, index): each example derives its
own numpy Generator, never global state, so grain workers, restarts and
different hosts all see the same data.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cloob_jax.data.synthetic import captions
from cloob_jax.data.synthetic import rendering
from cloob_jax.data.synthetic import scenes
from cloob_jax.data.synthetic import world


def check_family_size(family_size) -> int:
  """`family_size` as an int; refuses anything but a positive integer."""
  try:
    ok = int(family_size) == family_size and family_size >= 1
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"family_size must be a positive integer, got {family_size!r}")
  return int(family_size)


class SyntheticWorld:
  """A grain random-access source of synthetic image-caption examples.

  `SyntheticWorld('train')[i]` is a pure function of (seed, split, i, image_size):
  use it as `grain.MapDataset.source(SyntheticWorld(...))`. Picklable.
  """

  def __init__(self, split: str = "train", seed: int = 0, image_size: int = 64,
               num_examples: int | None = None, mention: Mapping[str, float] | None = None,
               family_size: int = 1):
    if split not in world.SPLIT_IDS:
      raise ValueError(f"split must be one of {tuple(world.SPLIT_IDS)}, got {split!r}")
    self.family_size = check_family_size(family_size)
    self.mention = captions.caption_mention(mention)
    self.split = split
    self.seed = int(seed)
    self.image_size = int(image_size)
    self.num_examples = int(num_examples if num_examples is not None
                            else world.DEFAULT_NUM_EXAMPLES[split])

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    mention = "" if self.mention == captions.CAPTION_MENTION else f", mention={self.mention}"
    family = f", family_size={self.family_size}" if self.family_size > 1 else ""
    return (f"SyntheticWorld(split={self.split!r}, seed={self.seed}, "
            f"image_size={self.image_size}, num_examples={self.num_examples}{mention}{family})")

  def _scene_and_draws(self, index: int) -> tuple[scenes.Scene, scenes.Draws]:
    """The scene of example `index` and the draws that go on to caption it."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self!r}")
    split = world.SPLIT_IDS[self.split]
    main, other = world.split_combos(self.split)
    if self.family_size == 1:
      d = scenes.Draws(np.random.default_rng([self.seed, split, index]))
      return scenes.sample_scene(d, main_combos=main, other_combos=other), d
    family, member = divmod(index, self.family_size)
    base = scenes.sample_scene(scenes.Draws(np.random.default_rng([self.seed, split, family, 0])),
                               main_combos=main, other_combos=other)
    d = scenes.Draws(np.random.default_rng([self.seed, split, family, 1 + member]))
    return (base if member == 0 else scenes.family_member(base, d, self.split)), d

  def scene(self, index: int) -> scenes.Scene:
    """The scene of example `index`, without rendering or captioning."""
    return self._scene_and_draws(index)[0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    scene, d = self._scene_and_draws(index)
    example = {"image": rendering.render(scene, self.image_size),
               "caption": captions.caption(scene, d, mention=self.mention)}
    example.update(scenes.scene_labels(scene))
    return example

  def train_shuffle(self, ds, *, seed: int, global_batch_size: int, num_workers: int):
    """The training order of this world's records, for `pipeline.create_train_dataset`.

    Args:
      ds: a seeded grain.MapDataset of this source's records.
      seed: the pipeline's shuffle seed.
      global_batch_size, num_workers: the pipeline's batch layout.

    Returns:
      an endless grain.MapDataset, reshuffled every epoch: grain's global shuffle, or with
      family_size > 1 whole families (`families.shuffle_families`, which raises ValueError
      for a batch layout that would split them).
    """
    if self.family_size == 1:
      return ds.shuffle().repeat()  # repeat reseeds the shuffle for every epoch
    # Late: grain is for the pipeline; configs and evaluators import the world without it.
    from cloob_jax.data.synthetic import families  # pylint: disable=g-import-not-at-top
    return families.shuffle_families(ds, self.family_size, seed=seed,
                                     global_batch_size=global_batch_size,
                                     num_workers=num_workers)
