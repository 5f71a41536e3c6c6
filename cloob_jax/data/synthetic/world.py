"""The embedded default dataset: a procedural world of coloured shapes with alt-text captions.

Ships as code, needs no files and no network. Every example is a scene of one to
three objects on a background; each object has a colour (8), a shape (8), a size
(small/large) and a position (a cell of a 3x3 grid; objects never share a cell).
Captions read like real alt-text: many templates and synonyms, and each caption
mentions only a random subset of the attributes and objects ("crimson disc",
"two blue squares on the left", "a photo of three shapes on a white background"),
but is always true of its scene.

The world is built to probe what CLOOB claims to improve (the encoders using all
the features, not only the easiest): colour is easy to see, size and count are
middling, shape and position of small objects are harder, and a fixed set of
colour-shape combinations (`HELDOUT_COMBOS`) never appears in the 'train' split,
so zero-shot accuracy on them measures composition rather than memorisation.

How often a caption mentions each attribute is `CAPTION_MENTION`, overridable per world
(`SyntheticWorld(mention={'position': 0.6})`, or `--config.data.caption_mention.position=0.6`
with configs/demo.py): the mix steers which features contrastive training picks up first.

Families (`SyntheticWorld(family_size=k)`, `--config.data.family_size=k`): records come in
families of k consecutive examples that share their colours, grid cells, count and background
and differ in every object's shape and, by chance, size (`family_member`). The training
pipeline shuffles whole families (pipeline._FamilyShuffle), so every batch holds minimal pairs
that colour and position cannot tell apart: in a batch of random scenes, colour and position
alone separate almost every pair, and contrastive training has no reason to learn shape.

Splits (`SyntheticWorld(split=...)`):
  'train':   no object of any scene has a held-out colour-shape combination.
  'test':    every combination allowed; for retrieval and general evaluation.
  'heldout': the main (first) object always has a held-out combination.

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

Zero-shot evaluation: `zeroshot_tasks()` defines the tasks (class names, prompt
templates, chance level), `task_examples(name, n)` renders their images and labels
deterministically (balanced classes), and `retrieval_examples(n)` gives images with
several detailed captions each for image-text retrieval. The tasks, with chance:
  colour (8 classes, 1/8)   one object; the easy feature.
  shape (8, 1/8)            one object; hard when small.
  size (2, 1/2)             one object, small vs large.
  position (9, 1/9)         one object, its 3x3 grid cell.
  count (3, 1/3)            one to three objects.
  heldout_combination (8, 1/8)  one object of a HELDOUT_COMBOS pair; needs colour and
                            shape composed (either alone caps accuracy at 1/2).
Except heldout_combination, task images use only the combinations seen in training.

Everything is a pure function of (seed, split, index): each example derives its
own numpy Generator, never global state, so grain workers, restarts and
different hosts all see the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------
# The vocabulary of the world.

# name, base RGB, caption synonyms (the name itself is the most common word).
_COLOUR_TABLE = (
    ("red", (215, 35, 35), ("crimson", "scarlet")),
    ("orange", (245, 135, 20), ("tangerine", "amber")),
    ("yellow", (245, 215, 30), ("golden", "lemon")),
    ("green", (40, 165, 60), ("emerald", "jade")),
    ("cyan", (30, 200, 215), ("turquoise", "aqua")),
    ("blue", (35, 70, 225), ("cobalt", "sapphire")),
    ("purple", (135, 50, 185), ("violet", "amethyst")),
    ("pink", (245, 125, 185), ("rose", "blush")),
)
COLOURS = tuple(c[0] for c in _COLOUR_TABLE)
COLOUR_RGB = np.array([c[1] for c in _COLOUR_TABLE], np.float32)  # [8, 3]
# Every word a caption may use for each colour, canonical name first.
COLOUR_SYNONYMS = {c[0]: (c[0],) + c[2] for c in _COLOUR_TABLE}

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
# (singular, plural) noun phrases a caption may use for each shape, canonical first.
SHAPE_NOUNS = {
    "circle": (("circle", "circles"), ("disc", "discs"), ("disk", "disks"), ("dot", "dots")),
    "square": (("square", "squares"), ("block", "blocks"), ("tile", "tiles")),
    "triangle": (("triangle", "triangles"), ("triangular shape", "triangular shapes")),
    "star": (("star", "stars"), ("star shape", "star shapes")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "ring": (("ring", "rings"), ("donut", "donuts"), ("doughnut", "doughnuts"), ("hoop", "hoops")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses"), ("lozenge", "lozenges")),
    "heart": (("heart", "hearts"), ("heart shape", "heart shapes")),
}
# Nouns for an object whose shape the caption does not mention.
GENERIC_NOUNS = (("shape", "shapes"), ("object", "objects"), ("thing", "things"),
                 ("figure", "figures"), ("item", "items"))

SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}

# 3x3 grid cells, row-major; the names double as the position task's class names.
POSITIONS = ("top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right")
_CELL_PHRASES = (
    ("in the top left corner", "at the top left", "in the upper left"),
    ("at the top", "at the top centre", "in the top middle", "at the top center"),
    ("in the top right corner", "at the top right", "in the upper right"),
    ("on the left", "at the left", "on the left side"),
    ("in the centre", "in the middle", "in the center"),
    ("on the right", "at the right", "on the right side"),
    ("in the bottom left corner", "at the bottom left", "in the lower left"),
    ("at the bottom", "at the bottom centre", "in the bottom middle"),
    ("in the bottom right corner", "at the bottom right", "in the lower right"),
)
# For a group of objects that share a column or a row but not a cell.
_COLUMN_PHRASES = (("on the left", "along the left side"),
                   ("down the middle", "in the middle column"),
                   ("on the right", "along the right side"))
_ROW_PHRASES = (("at the top", "along the top"),
                ("across the middle", "in the middle row"),
                ("at the bottom", "along the bottom"))

# name, base grey level, caption words. (A fifth, 'noisy' background of per-pixel luminance
# noise was dropped: it slowed the demo's tiny towers without testing anything the paper claims.)
_BACKGROUND_TABLE = (
    ("black", 15, ("black", "dark", "plain black")),
    ("dark grey", 75, ("dark grey", "dark gray", "charcoal", "dark")),
    ("light grey", 185, ("light grey", "light gray", "pale grey", "light")),
    ("white", 240, ("white", "plain white", "light")),
)
BACKGROUNDS = tuple(b[0] for b in _BACKGROUND_TABLE)

MAX_OBJECTS = 3
_NUM_OBJECTS_P = (0.4, 0.3, 0.3)  # P(1), P(2), P(3) objects in a split's scenes
_GROUP_P = 0.35  # P(a multi-object scene repeats one colour-shape: "three red stars")
# P(a caption mentions each attribute); 'all': P(it describes every object, not a subset).
# A caption's mix steers what contrastive training learns first (`SyntheticWorld(mention=)`).
CAPTION_MENTION = dict(colour=0.75, shape=0.75, size=0.3, position=0.35, background=0.2, all=0.65)
_MENTION_DETAILED = dict(colour=1.0, shape=1.0, size=0.5, position=0.5, background=0.3, all=1.0)


def caption_mention(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
  """CAPTION_MENTION with `overrides`; refuses unknown attributes and non-probabilities."""
  mention = dict(CAPTION_MENTION)
  for key, value in (overrides or {}).items():
    if key not in mention:
      raise ValueError(f"caption mention: unknown attribute {key!r}; known: {tuple(mention)}")
    if not 0.0 <= float(value) <= 1.0:
      raise ValueError(f"caption mention: {key}={value!r} is not a probability in [0, 1]")
    mention[key] = float(value)
  return mention


def check_family_size(family_size) -> int:
  """`family_size` as an int; refuses anything but a positive integer."""
  try:
    ok = int(family_size) == family_size and family_size >= 1
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"family_size must be a positive integer, got {family_size!r}")
  return int(family_size)


# Never in 'train'. A 4-cycle over colours x shapes: each held-out colour and each
# held-out shape occurs in exactly two of these, so on the heldout_combination task
# colour alone or shape alone tops out at 50% and only composing both gets 100%.
# Each of these colours (shapes) is still seen in training with 6 other shapes (colours).
HELDOUT_COMBOS = (
    ("red", "square"), ("red", "star"),
    ("green", "star"), ("green", "triangle"),
    ("blue", "triangle"), ("blue", "heart"),
    ("yellow", "heart"), ("yellow", "square"),
)
_HELDOUT_INDEX = {(COLOURS.index(c), SHAPES.index(s)): i
                  for i, (c, s) in enumerate(HELDOUT_COMBOS)}

_SPLIT_IDS = {"train": 0, "test": 1, "heldout": 2}
_DEFAULT_NUM_EXAMPLES = {"train": 1_000_000, "test": 10_000, "heldout": 10_000}
_TASK_STREAM = 100  # seed stream of zero-shot task images: [seed, 100 + task id, i]
_RETRIEVAL_STREAM = 200  # seed stream of retrieval examples

# Geometry, in units of a grid cell (image_size / 3).
_RADIUS = (0.30, 0.45)  # object radius for small, large
_RADIUS_JITTER = 0.08  # relative
_MAX_ANGLE = math.radians(15)  # small tilts only, so that a square never reads as a diamond
_COLOUR_JITTER = 15  # per channel, uniform +-


def _combo_table(kind: str) -> np.ndarray:
  """Allowed colour-shape pairs: bool [len(COLOURS), len(SHAPES)]."""
  held = np.zeros((len(COLOURS), len(SHAPES)), bool)
  for c, s in _HELDOUT_INDEX:
    held[c, s] = True
  return {"seen": ~held, "heldout": held, "all": np.ones_like(held)}[kind]


# (colour, shape) pairs of each combination set: 'seen' (all but held out), 'heldout', 'all'.
_COMBO_PAIRS = {kind: tuple((int(c), int(s)) for c, s in np.argwhere(_combo_table(kind)))
                for kind in ("seen", "heldout", "all")}


# ----------------------------------------------------------------------------
# Shapes as signed distance tables.

# The table covers [-1.8, 1.8]^2 in units of the object radius: wide enough for an object's
# tilted drawing box (+-_REACH radii) except at tiny radii, where lookups clip to the border.
_SDF_HALF_WIDTH = 1.8
_SDF_RES = 192
_REACH = 1.25  # half-side of an object's drawing box, in radii; shapes fit in ~1.05


def _polygon_sdf(points: np.ndarray, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
  """Signed distance to a closed polygon (negative inside): points [n, 2] -> [n]."""
  v = np.asarray(vertices, np.float64)
  e = np.roll(v, -1, axis=0) - v  # [m, 2] edge vectors
  w = points[:, None, :] - v[None]  # [n, m, 2]
  t = np.clip((w * e).sum(-1) / (e * e).sum(-1), 0.0, 1.0)
  dist = np.sqrt(((w - t[..., None] * e) ** 2).sum(-1).min(-1))
  y = points[:, 1:2]
  v0y, v1y = v[None, :, 1], np.roll(v, -1, axis=0)[None, :, 1]
  crosses = (v0y <= y) != (v1y <= y)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_at = v[None, :, 0] + (y - v0y) / (v1y - v0y) * e[None, :, 0]
  inside = (crosses & (points[:, 0:1] < x_at)).sum(-1) % 2 == 1
  return np.where(inside, -dist, dist)


def _shape_vertices(name: str) -> list[tuple[float, float]]:
  """Polygon of a shape, in units of its radius, y pointing down."""
  if name == "square":
    h = 0.72
    return [(-h, -h), (h, -h), (h, h), (-h, h)]
  if name == "triangle":  # equilateral, pointing up, shifted down to centre its bounding box
    return [(1.02 * math.cos(a), 1.02 * math.sin(a) + 0.26)
            for a in np.radians([-90, 30, 150])]
  if name == "star":  # five points, alternating outer and inner radius
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    angles = np.radians(-90 + 36 * np.arange(10))
    return list(zip(radii * np.cos(angles), radii * np.sin(angles) + 0.08))
  if name == "cross":
    a, b = 0.88, 0.3
    return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
            (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
  if name == "diamond":
    return [(0.0, -0.95), (0.62, 0.0), (0.0, 0.95), (-0.62, 0.0)]
  if name == "heart":  # the classic parametric heart, flipped so the tip points down
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return list(zip(x * 0.9 / 16, (y - 2.5) * 0.9 / 16))
  raise ValueError(name)


@functools.cache
def _sdf_tables() -> np.ndarray:
  """Signed distance of every shape on a grid: float32 [len(SHAPES), RES, RES], radius units."""
  u = np.linspace(-_SDF_HALF_WIDTH, _SDF_HALF_WIDTH, _SDF_RES)
  yy, xx = np.meshgrid(u, u, indexing="ij")
  points = np.stack([xx.ravel(), yy.ravel()], -1)
  norm = np.hypot(xx, yy)
  tables = []
  for name in SHAPES:
    if name == "circle":
      sdf = norm - 0.82
    elif name == "ring":
      sdf = np.abs(norm - 0.66) - 0.21
    else:
      sdf = _polygon_sdf(points, _shape_vertices(name)).reshape(xx.shape)
    tables.append(sdf)
  return np.stack(tables).astype(np.float32)


# ----------------------------------------------------------------------------
# Scenes.


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


class _Draws:
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


def _draws(rng: np.random.Generator | _Draws) -> _Draws:
  return rng if isinstance(rng, _Draws) else _Draws(rng)


def _sample_object(d: _Draws, colour: int, shape: int, size: int, cell: int) -> SceneObject:
  row, col = divmod(cell, 3)
  radius = _RADIUS[size] * (1 + d.symmetric(_RADIUS_JITTER))  # in cells
  slack = 0.6 * max(0.5 - radius - 0.03, 0.0)  # keep every object inside its cell
  cx = (col + 0.5 + d.symmetric(slack)) / 3
  cy = (row + 0.5 + d.symmetric(slack)) / 3
  angle = d.symmetric(_MAX_ANGLE)
  rgb = tuple(min(max(int(v + d.symmetric(_COLOUR_JITTER + 0.5)), 0), 255)
              for v in _COLOUR_TABLE[colour][1])
  return SceneObject(colour=colour, shape=shape, size=size, position=cell, centre=(cx, cy),
                     radius=radius / 3, angle=angle, rgb=rgb)


def sample_scene(rng: np.random.Generator | _Draws, main_combos: str = "seen",
                 other_combos: str = "seen", num_objects: int | None = None, colour: int | None = None,
                 shape: int | None = None, size: int | None = None,
                 position: int | None = None) -> Scene:
  """Samples a scene; the keyword attributes, when given, fix those of the main object.

  Args:
    rng: the example's generator.
    main_combos: colour-shape pairs allowed for the main object: 'seen' (all but
      HELDOUT_COMBOS), 'heldout' (only those) or 'all'.
    other_combos: likewise for the other objects.
    num_objects: 1..MAX_OBJECTS, or None for the split distribution.
  """
  d = _draws(rng)
  if num_objects is None:
    u = d.uniform()
    num_objects = 1 + (u >= _NUM_OBJECTS_P[0]) + (u >= _NUM_OBJECTS_P[0] + _NUM_OBJECTS_P[1])
  cells = d.permutation(9)[:num_objects]
  if position is not None:
    cells = [position] + [c for c in cells if c != position][:num_objects - 1]
  pairs = _COMBO_PAIRS[main_combos]
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
      c, s = main if group else d.pick(_COMBO_PAIRS[other_combos])
      z = first_size if group and same_size else d.below(2)
    objects.append(_sample_object(d, c, s, z, cell))
  background = d.below(len(BACKGROUNDS))
  level = _BACKGROUND_TABLE[background][1] + d.below(21) - 10
  return Scene(objects=tuple(objects), background=background, background_level=level)


def render(scene: Scene, image_size: int = 64) -> np.ndarray:
  """Draws a scene with anti-aliased edges: uint8 [image_size, image_size, 3]."""
  s = image_size
  image = np.full((s, s, 3), scene.background_level, np.float32)
  tables = _sdf_tables()
  to_table = (_SDF_RES - 1) / (2 * _SDF_HALF_WIDTH)
  for obj in scene.objects:
    r = obj.radius * s
    cx, cy = obj.centre[0] * s, obj.centre[1] * s
    reach = r * _REACH
    x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)), s)
    y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)), s)
    # Table coordinates of pixel centres, rotated by -angle: u along x, v along y.
    k = to_table / r
    cos, sin = math.cos(obj.angle) * k, math.sin(obj.angle) * k
    dx = np.arange(x0, x1, dtype=np.float32) + (0.5 - cx)
    dy = np.arange(y0, y1, dtype=np.float32) + (0.5 - cy)
    offset = _SDF_HALF_WIDTH * to_table + 0.5  # +0.5: truncation below rounds to nearest
    u = (dx * cos + offset)[None, :] + (dy * sin)[:, None]
    v = (dy * cos + offset)[:, None] - (dx * sin)[None, :]
    # In place: np.clip's Python wrapper costs more than the arithmetic on these tiny arrays.
    iu = np.minimum(np.maximum(u, 0, out=u), _SDF_RES - 1, out=u).astype(np.intp)
    iv = np.minimum(np.maximum(v, 0, out=v), _SDF_RES - 1, out=v).astype(np.intp)
    # Coverage of a pixel ~ 0.5 - signed distance in pixels: a one-pixel anti-aliased edge.
    alpha = tables[obj.shape][iv, iu]
    alpha *= -r
    alpha += 0.5
    np.minimum(np.maximum(alpha, 0.0, out=alpha), 1.0, out=alpha)
    patch = image[y0:y1, x0:x1]
    patch += alpha[..., None] * (np.asarray(obj.rgb, np.float32) - patch)
  image += 0.5  # every value is already within [0, 255]: round, no clip
  return image.astype(np.uint8)


# ----------------------------------------------------------------------------
# Captions.

_COUNT_WORDS = {2: ("two", "2", "a pair of"), 3: ("three", "3")}
_PREFIXES = ("", "", "", "a photo of ", "an image of ", "a picture of ", "a drawing of ",
             "a render of ", "clip art of ", "an illustration of ", "a simple graphic of ",
             "a snapshot of ", "a scene with ", "a close-up of ")
_CONNECTORS_2 = (" and ", " and ", " with ", ", ", " alongside ", " beside ")
_BACKGROUND_FORMS = (" on a {} background", " against a {} backdrop", ", {} background",
                     " in front of a {} background")


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _colour_word(d: _Draws, colour: int) -> str:
  syn = COLOUR_SYNONYMS[COLOURS[colour]]
  return syn[0] if d.uniform() < 0.5 else d.pick(syn[1:])


def _noun(d: _Draws, shape: int | None, plural: bool) -> str:
  if shape is None:
    forms = d.pick(GENERIC_NOUNS)
  else:
    nouns = SHAPE_NOUNS[SHAPES[shape]]
    forms = nouns[0] if d.uniform() < 0.5 else d.pick(nouns[1:])
  return forms[plural]


def _group_position(d: _Draws, members: Sequence[SceneObject]) -> str | None:
  cells = {o.position for o in members}
  if len(cells) == 1:
    return d.pick(_CELL_PHRASES[cells.pop()])
  options = []
  rows, cols = {c // 3 for c in cells}, {c % 3 for c in cells}
  if len(cols) == 1:
    options += _COLUMN_PHRASES[cols.pop()]
  if len(rows) == 1:
    options += _ROW_PHRASES[rows.pop()]
  return d.pick(options) if options else None


def _phrase(d: _Draws, members: Sequence[SceneObject], mention: dict[str, bool]) -> str:
  """A noun phrase for all the objects that share the mentioned attributes."""
  first, n = members[0], len(members)
  colour = _colour_word(d, first.colour) if mention["colour"] else None
  colour_after = colour is not None and d.uniform() < 0.12  # "a circle in red"
  words = []
  if mention["size"]:
    words.append(d.pick(SIZE_WORDS[SIZES[first.size]]))
  if colour and not colour_after:
    words.append(colour)
  words.append(_noun(d, first.shape if mention["shape"] else None, n > 1))
  if colour_after:
    words.append(d.pick(("in {}", "coloured {}", "colored {}")).format(colour))
  if mention["position"]:
    where = _group_position(d, members)
    if where:
      words.append(where)
  body = " ".join(words)
  if n > 1:
    return f"{d.pick(_COUNT_WORDS[n])} {body}"
  if d.uniform() < 0.2:
    return d.pick(("one ", "a single ")) + body
  return f"{_article(body)} {body}"


def caption(scene: Scene, rng: np.random.Generator | _Draws, detailed: bool = False,
            mention: Mapping[str, float] | None = None) -> str:
  """A random, true description of a scene that mentions some of its attributes and objects.

  Objects are grouped by the attributes the caption mentions and every group is
  described with its exact size ("two blue shapes" means exactly two blue objects).
  `mention` gives P(mentioned) per attribute (default CAPTION_MENTION; see caption_mention).
  With `detailed`, colour and shape of every object are always mentioned (for retrieval).
  """
  d = _draws(rng)
  p = _MENTION_DETAILED if detailed else (mention or CAPTION_MENTION)
  mention = {k: d.uniform() < p[k] for k in CAPTION_MENTION}  # one draw each, in a fixed order
  groups: dict[tuple[Any, ...], list[SceneObject]] = {}
  for obj in scene.objects:
    key = (obj.colour if mention["colour"] else None, obj.shape if mention["shape"] else None,
           obj.size if mention["size"] else None)
    groups.setdefault(key, []).append(obj)
  members = list(groups.values())
  if not mention["all"] and len(members) > 1:  # alt-text rarely lists everything
    keep = [d.uniform() < 0.5 for _ in members]
    keep[d.below(len(members))] = True
    members = [m for m, k in zip(members, keep) if k]
  if d.uniform() < 0.5:
    members = [members[i] for i in d.permutation(len(members))]
  phrases = [_phrase(d, m, mention) for m in members]
  if len(phrases) == 1:
    text = phrases[0]
  elif len(phrases) == 2:
    text = phrases[0] + d.pick(_CONNECTORS_2) + phrases[1]
  else:
    text = ", ".join(phrases[:-1]) + d.pick((" and ", ", and ", ", ")) + phrases[-1]
  u = d.uniform()
  if (u < 0.15 and len(phrases) == 1 and len(members[0]) == 1
      and text.split(" ", 1)[0] in ("a", "an") and not text.startswith("a single")):
    text = text.split(" ", 1)[1]  # alt-text often drops the article: "crimson disc"
  elif u < 0.27:
    text = ("there are " if len(members[0]) > 1 else "there is ") + text
  else:
    text = d.pick(_PREFIXES) + text
  if mention["background"]:
    text += d.pick(_BACKGROUND_FORMS).format(d.pick(_BACKGROUND_TABLE[scene.background][2]))
  if d.uniform() < 0.3:
    text = text[0].upper() + text[1:]
  if d.uniform() < 0.4:
    text += "."
  return text


# ----------------------------------------------------------------------------
# The data source.


def _split_combos(split: str) -> tuple[str, str]:
  """(main object, other objects) combination sets of a split."""
  return {"train": ("seen", "seen"), "test": ("all", "all"), "heldout": ("heldout", "all")}[split]


_FAMILY_SIZE_FLIP = 0.5  # P(a family member's object has the other size)


def family_member(scene: Scene, rng: np.random.Generator | _Draws, split: str = "train") -> Scene:
  """A minimal-pair variant of `scene`: the same colours, cells, count and background.

  Every colour-shape pair of the scene gets a new shape allowed in `split` (objects that
  shared a pair still share one, so "three red stars" stays a group), and each object takes
  the other size with probability _FAMILY_SIZE_FLIP; its jitter is drawn again.
  """
  d = _draws(rng)
  main, other = _split_combos(split)
  new_shape = {}
  objects = []
  for k, obj in enumerate(scene.objects):
    pair = (obj.colour, obj.shape)
    if pair not in new_shape:
      allowed = [s for c, s in _COMBO_PAIRS[main if k == 0 else other]
                 if c == obj.colour and s != obj.shape]
      new_shape[pair] = d.pick(allowed) if allowed else obj.shape
    size = 1 - obj.size if d.uniform() < _FAMILY_SIZE_FLIP else obj.size
    objects.append(_sample_object(d, obj.colour, new_shape[pair], size, obj.position))
  return dataclasses.replace(scene, objects=tuple(objects))


def _pad(values: Sequence[int]) -> np.ndarray:
  out = np.full((MAX_OBJECTS,), -1, np.int32)
  out[:len(values)] = values
  return out


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
  """The integer label fields of an example (see the module docstring)."""
  main = scene.objects[0]
  i32 = np.int32
  return {
      "colour": i32(main.colour), "shape": i32(main.shape), "size": i32(main.size),
      "position": i32(main.position), "count": i32(len(scene.objects)),
      "combo": i32(main.colour * len(SHAPES) + main.shape),
      "heldout_combo": i32(_HELDOUT_INDEX.get((main.colour, main.shape), -1)),
      "background": i32(scene.background),
      "object_colour": _pad([o.colour for o in scene.objects]),
      "object_shape": _pad([o.shape for o in scene.objects]),
      "object_size": _pad([o.size for o in scene.objects]),
      "object_position": _pad([o.position for o in scene.objects]),
  }


class SyntheticWorld:
  """A grain random-access source of synthetic image-caption examples.

  `SyntheticWorld('train')[i]` is a pure function of (seed, split, i, image_size):
  use it as `grain.MapDataset.source(SyntheticWorld(...))`. Picklable.
  """

  def __init__(self, split: str = "train", seed: int = 0, image_size: int = 64,
               num_examples: int | None = None, mention: Mapping[str, float] | None = None,
               family_size: int = 1):
    if split not in _SPLIT_IDS:
      raise ValueError(f"split must be one of {tuple(_SPLIT_IDS)}, got {split!r}")
    self.family_size = check_family_size(family_size)
    self.mention = caption_mention(mention)
    self.split = split
    self.seed = int(seed)
    self.image_size = int(image_size)
    self.num_examples = int(num_examples if num_examples is not None
                            else _DEFAULT_NUM_EXAMPLES[split])

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    mention = "" if self.mention == CAPTION_MENTION else f", mention={self.mention}"
    family = f", family_size={self.family_size}" if self.family_size > 1 else ""
    return (f"SyntheticWorld(split={self.split!r}, seed={self.seed}, "
            f"image_size={self.image_size}, num_examples={self.num_examples}{mention}{family})")

  def _scene_and_draws(self, index: int) -> tuple[Scene, _Draws]:
    """The scene of example `index` and the draws that go on to caption it."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self!r}")
    split = _SPLIT_IDS[self.split]
    main, other = _split_combos(self.split)
    if self.family_size == 1:
      d = _Draws(np.random.default_rng([self.seed, split, index]))
      return sample_scene(d, main_combos=main, other_combos=other), d
    family, member = divmod(index, self.family_size)
    base = sample_scene(_Draws(np.random.default_rng([self.seed, split, family, 0])),
                        main_combos=main, other_combos=other)
    d = _Draws(np.random.default_rng([self.seed, split, family, 1 + member]))
    return (base if member == 0 else family_member(base, d, self.split)), d

  def scene(self, index: int) -> Scene:
    """The scene of example `index`, without rendering or captioning."""
    return self._scene_and_draws(index)[0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    scene, d = self._scene_and_draws(index)
    example = {"image": render(scene, self.image_size),
               "caption": caption(scene, d, mention=self.mention)}
    example.update(scene_labels(scene))
    return example


# ----------------------------------------------------------------------------
# Zero-shot tasks.


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
  """A zero-shot classification task over rendered scenes.

  Attributes:
    name: task name.
    classnames: one text per class, filled into each template.
    templates: prompt templates with one '{}'.
    label_field: the example field that holds the label.
    label_offset: label = example[label_field] - label_offset ('count' is 1-based).
    chance: accuracy of guessing (classes are balanced in `task_examples`).
    combos: colour-shape pairs of the main object: 'seen', 'heldout' or 'all'.
    single_object: task images hold one object, so the attribute is unambiguous.
    description: what the task measures.
  """
  name: str
  classnames: tuple[str, ...]
  templates: tuple[str, ...]
  label_field: str
  chance: float
  combos: str = "seen"
  single_object: bool = True
  label_offset: int = 0
  description: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.classnames)

  def label(self, example: dict[str, Any]) -> int:
    """The class index of an example from `SyntheticWorld` (or `task_examples`)."""
    return int(example[self.label_field]) - self.label_offset


def _task(name, classnames, templates, label_field, **kwargs) -> ZeroShotTask:
  return ZeroShotTask(name=name, classnames=tuple(classnames), templates=tuple(templates),
                      label_field=label_field, chance=1 / len(classnames), **kwargs)


def zeroshot_tasks() -> dict[str, ZeroShotTask]:
  """The zero-shot tasks of the world, by name, in a fixed order."""
  return dict(_zeroshot_tasks())


@functools.cache
def _zeroshot_tasks() -> dict[str, ZeroShotTask]:
  object_templates = ("a photo of a {}.", "a {}.", "an image of a {}.", "a drawing of a {}.",
                      "a picture showing a {}.", "there is a {}.")
  tasks = [
      _task("colour", COLOURS,
            ("a photo of a {} shape.", "a {} object.", "something {}.",
             "an image of a {} thing.", "a drawing of a {} figure.", "a {} shape on a background."),
            "colour", description="colour of a single object: the easy feature"),
      _task("shape", SHAPES, object_templates, "shape",
            description="shape of a single object, small or large"),
      _task("size", SIZES,
            ("a photo of a {} shape.", "a {} object.", "an image of a {} thing.",
             "a drawing of a {} figure."),
            "size", description="small vs large single object"),
      _task("position", [p[0] for p in _CELL_PHRASES],
            ("a shape {}.", "a photo of an object {}.", "an image with one shape {}.",
             "a drawing of something {}."),
            "position", description="3x3 grid cell of a single object"),
      _task("count", ("a single shape", "two shapes", "three shapes"),
            ("a photo of {}.", "an image of {}.", "{}.", "a picture with {}.",
             "a drawing of {}."),
            "count", single_object=False, label_offset=1,
            description="number of objects (1-3) in a scene"),
      _task("heldout_combination", [f"{c} {s}" for c, s in HELDOUT_COMBOS], object_templates,
            "heldout_combo", combos="heldout",
            description="colour-shape pairs never seen in training; colour or shape "
                        "alone can reach at most 50%"),
  ]
  return {t.name: t for t in tasks}


def task_examples(task: str | ZeroShotTask, num_examples: int, image_size: int = 64,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Renders a task's evaluation set, deterministically and with balanced classes.

  Example i has label i % num_classes, so every class is present once
  num_examples >= num_classes. Everything except the labelled attribute is sampled.

  Returns:
    images: uint8 [num_examples, image_size, image_size, 3].
    labels: int32 [num_examples], indices into the task's classnames.
  """
  tasks = zeroshot_tasks()
  task = tasks[task] if isinstance(task, str) else task
  stream = _TASK_STREAM + list(tasks).index(task.name)
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  labels = np.arange(num_examples, dtype=np.int32) % task.num_classes
  for i in range(num_examples):
    rng = np.random.default_rng([seed, stream, i])
    fixed = {"num_objects": None if not task.single_object else 1}
    if task.name == "heldout_combination":
      c, s = HELDOUT_COMBOS[labels[i]]
      fixed.update(colour=COLOURS.index(c), shape=SHAPES.index(s))
    elif task.name == "count":
      fixed["num_objects"] = int(labels[i]) + 1
    else:
      fixed[task.label_field] = int(labels[i])
    scene = sample_scene(rng, main_combos=task.combos, other_combos="seen", **fixed)
    assert task.label(scene_labels(scene)) == labels[i]
    images[i] = render(scene, image_size)
  return images, labels


def retrieval_examples(num_examples: int, image_size: int = 64, seed: int = 0,
                       captions_per_image: int = 5) -> tuple[np.ndarray, list[list[str]]]:
  """Scenes of the 'test' distribution, each with several detailed captions.

  Captions always name the colour and shape of every object (sometimes size,
  position and background), so most images are identified by their captions.

  Returns:
    images: uint8 [num_examples, image_size, image_size, 3].
    captions: num_examples lists of captions_per_image str.
  """
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  captions = []
  for i in range(num_examples):
    scene = sample_scene(np.random.default_rng([seed, _RETRIEVAL_STREAM, i]), "all", "all")
    images[i] = render(scene, image_size)
    captions.append([caption(scene, np.random.default_rng([seed, _RETRIEVAL_STREAM, i, k]),
                             detailed=True) for k in range(captions_per_image)])
  return images, captions
