"""Scenes of the synthetic world: sampling, minimal-pair family members, and their labels.

A scene is one to MAX_OBJECTS objects, each in its own cell of the 3x3 grid, on a
background; its first object is the main one, whose attributes are the example's labels
(`scene_labels`). Geometry is in units of the image side, so a scene renders at any size.

Families (`SyntheticWorld(family_size=k)`, see `source`): `family_member` turns a scene
into a minimal pair: the same colours, grid cells, count and background, another shape for
every object and, by chance, another size.

Randomness comes from a `Draws` (uniform draws from an example's own numpy Generator, in
blocks), never from global state: the order of draws is part of the data, so a scene and its
caption are a pure function of the Generator's seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from cloob_jax.data.synthetic import world

_NUM_OBJECTS_P = (0.4, 0.3, 0.3)  # P(1), P(2), P(3) objects in a split's scenes
_GROUP_P = 0.35  # P(a multi-object scene repeats one colour-shape: "three red stars")

# Geometry, in units of a grid cell (image_size / 3).
_RADIUS = (0.30, 0.45)  # object radius for small, large
_RADIUS_JITTER = 0.08  # relative
_MAX_ANGLE = math.radians(15)  # small tilts only, so that a square never reads as a diamond
_COLOUR_JITTER = 15  # per channel, uniform +-


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object. Geometry is in units of the image side, so a scene renders at any size."""
  colour: int  # index into COLOURS
  shape: int  # index into SHAPES
  size: int  # index into SIZES
  position: int  # grid cell, index into POSITIONS
  centre: tuple[float, float]  # (x, y) in [0, 1]
  radius: float  # fraction of the image side
  angle: float  # radians
  rgb: tuple[int, int, int]  # the colour after per-object jitter


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[SceneObject, ...]  # the first is the main object
  background: int  # index into BACKGROUNDS
  background_level: int  # grey level 0..255


class Draws:
  """Uniform [0, 1) draws from a Generator, fetched in blocks.

  One Generator call costs microseconds; a scene and its caption need ~50 draws.
  """
  __slots__ = ("_gen", "_buf", "_i")

  def __init__(self, gen: np.random.Generator):
    self._gen, self._buf, self._i = gen, [], 0

  def uniform(self) -> float:
    if self._i == len(self._buf):
      self._buf, self._i = self._gen.random(64).tolist(), 0
    self._i += 1
    return self._buf[self._i - 1]

  def below(self, n: int) -> int:
    return int(self.uniform() * n)

  def pick(self, seq: Sequence[Any]) -> Any:
    return seq[self.below(len(seq))]

  def symmetric(self, scale: float) -> float:
    return scale * (2 * self.uniform() - 1)

  def permutation(self, n: int) -> list[int]:
    out = list(range(n))
    for i in range(n - 1, 0, -1):  # Fisher-Yates
      j = self.below(i + 1)
      out[i], out[j] = out[j], out[i]
    return out


def draws(rng: np.random.Generator | Draws) -> Draws:
  """`rng` itself if it is a Draws already (draws continue where it stands), else a new one."""
  return rng if isinstance(rng, Draws) else Draws(rng)


def _sample_object(d: Draws, colour: int, shape: int, size: int, cell: int) -> SceneObject:
  row, col = divmod(cell, 3)
  radius = _RADIUS[size] * (1 + d.symmetric(_RADIUS_JITTER))  # in cells
  slack = 0.6 * max(0.5 - radius - 0.03, 0.0)  # keep every object inside its cell
  cx = (col + 0.5 + d.symmetric(slack)) / 3
  cy = (row + 0.5 + d.symmetric(slack)) / 3
  angle = d.symmetric(_MAX_ANGLE)
  rgb = tuple(min(max(int(v + d.symmetric(_COLOUR_JITTER + 0.5)), 0), 255)
              for v in world.COLOUR_TABLE[colour][1])
  return SceneObject(colour=colour, shape=shape, size=size, position=cell, centre=(cx, cy),
                     radius=radius / 3, angle=angle, rgb=rgb)


def sample_scene(rng: np.random.Generator | Draws, main_combos: str = "seen",
                 other_combos: str = "seen", num_objects: int | None = None,
                 colour: int | None = None, shape: int | None = None, size: int | None = None,
                 position: int | None = None) -> Scene:
  """Samples a scene; the keyword attributes, when given, fix those of the main object.

  Args:
    rng: the example's generator.
    main_combos: colour-shape pairs allowed for the main object: 'seen' (all but
      HELDOUT_COMBOS), 'heldout' (only those) or 'all'.
    other_combos: likewise for the other objects.
    num_objects: 1..MAX_OBJECTS, or None for the split distribution.
  """
  d = draws(rng)
  if num_objects is None:
    u = d.uniform()
    num_objects = 1 + (u >= _NUM_OBJECTS_P[0]) + (u >= _NUM_OBJECTS_P[0] + _NUM_OBJECTS_P[1])
  cells = d.permutation(9)[:num_objects]
  if position is not None:
    cells = [position] + [c for c in cells if c != position][:num_objects - 1]
  pairs = world.COMBO_PAIRS[main_combos]
  if colour is not None or shape is not None:
    pairs = [(c, s) for c, s in pairs
             if colour in (None, c) and shape in (None, s)]
    if not pairs:
      raise ValueError(f"no {main_combos} combination with colour={colour}, shape={shape}")
  main = d.pick(pairs)
  group = num_objects > 1 and d.uniform() < _GROUP_P
  same_size = d.uniform() < 0.5
  first_size = size if size is not None else d.below(2)
  objects = []
  for k, cell in enumerate(cells):
    if k == 0:
      (c, s), z = main, first_size
    else:
      c, s = main if group else d.pick(world.COMBO_PAIRS[other_combos])
      z = first_size if group and same_size else d.below(2)
    objects.append(_sample_object(d, c, s, z, cell))
  background = d.below(len(world.BACKGROUNDS))
  level = world.BACKGROUND_TABLE[background][1] + d.below(21) - 10
  return Scene(objects=tuple(objects), background=background, background_level=level)


_FAMILY_SIZE_FLIP = 0.5  # P(a family member's object has the other size)


def family_member(scene: Scene, rng: np.random.Generator | Draws, split: str = "train") -> Scene:
  """A minimal-pair variant of `scene`: the same colours, cells, count and background.

  Every colour-shape pair of the scene gets a new shape allowed in `split` (objects that
  shared a pair still share one, so "three red stars" stays a group), and each object takes
  the other size with probability _FAMILY_SIZE_FLIP; its jitter is drawn again.
  """
  d = draws(rng)
  main, other = world.split_combos(split)
  new_shape = {}
  objects = []
  for k, obj in enumerate(scene.objects):
    pair = (obj.colour, obj.shape)
    if pair not in new_shape:
      allowed = [s for c, s in world.COMBO_PAIRS[main if k == 0 else other]
                 if c == obj.colour and s != obj.shape]
      new_shape[pair] = d.pick(allowed) if allowed else obj.shape
    size = 1 - obj.size if d.uniform() < _FAMILY_SIZE_FLIP else obj.size
    objects.append(_sample_object(d, obj.colour, new_shape[pair], size, obj.position))
  return dataclasses.replace(scene, objects=tuple(objects))


def _pad(values: Sequence[int]) -> np.ndarray:
  out = np.full((world.MAX_OBJECTS,), -1, np.int32)
  out[:len(values)] = values
  return out


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
  """The integer label fields of an example (listed in the `source` module docstring)."""
  main = scene.objects[0]
  i32 = np.int32
  return {
      "colour": i32(main.colour), "shape": i32(main.shape), "size": i32(main.size),
      "position": i32(main.position), "count": i32(len(scene.objects)),
      "combo": i32(main.colour * len(world.SHAPES) + main.shape),
      "heldout_combo": i32(world.HELDOUT_INDEX.get((main.colour, main.shape), -1)),
      "background": i32(scene.background),
      "object_colour": _pad([o.colour for o in scene.objects]),
      "object_shape": _pad([o.shape for o in scene.objects]),
      "object_size": _pad([o.size for o in scene.objects]),
      "object_position": _pad([o.position for o in scene.objects]),
  }

