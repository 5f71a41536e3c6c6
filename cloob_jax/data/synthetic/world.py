"""The vocabulary of the synthetic world: colours, shapes, sizes, positions, backgrounds.

Every example is a scene of one to three objects on a background; each object has a colour
(8), a shape (8), a size (small/large) and a position (a cell of a 3x3 grid; objects never
share a cell). Every attribute comes with the words and phrases a caption may use for it.

The world is built to probe what CLOOB claims to improve (the encoders using all
the features, not only the easiest): colour is easy to see, size and count are
middling, shape and position of small objects are harder, and a fixed set of
colour-shape combinations (`HELDOUT_COMBOS`) never appears in the 'train' split,
so zero-shot accuracy on them measures composition rather than memorisation.

Splits (`SyntheticWorld(split=...)`, `split_combos`):
  'train':   no object of any scene has a held-out colour-shape combination.
  'test':    every combination allowed; for retrieval and general evaluation.
  'heldout': the main (first) object always has a held-out combination.
"""

from __future__ import annotations

import numpy as np

# name, base RGB, caption synonyms (the name itself is the most common word).
COLOUR_TABLE = (
    ("red", (215, 35, 35), ("crimson", "scarlet")),
    ("orange", (245, 135, 20), ("tangerine", "amber")),
    ("yellow", (245, 215, 30), ("golden", "lemon")),
    ("green", (40, 165, 60), ("emerald", "jade")),
    ("cyan", (30, 200, 215), ("turquoise", "aqua")),
    ("blue", (35, 70, 225), ("cobalt", "sapphire")),
    ("purple", (135, 50, 185), ("violet", "amethyst")),
    ("pink", (245, 125, 185), ("rose", "blush")),
)
COLOURS = tuple(c[0] for c in COLOUR_TABLE)
COLOUR_RGB = np.array([c[1] for c in COLOUR_TABLE], np.float32)  # [8, 3]
# Every word a caption may use for each colour, canonical name first.
COLOUR_SYNONYMS = {c[0]: (c[0],) + c[2] for c in COLOUR_TABLE}

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
CELL_PHRASES = (
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
COLUMN_PHRASES = (("on the left", "along the left side"),
                  ("down the middle", "in the middle column"),
                  ("on the right", "along the right side"))
ROW_PHRASES = (("at the top", "along the top"),
               ("across the middle", "in the middle row"),
               ("at the bottom", "along the bottom"))

# name, base grey level, caption words. (A fifth, 'noisy' background of per-pixel luminance
# noise was dropped: it slowed the demo's tiny towers without testing anything the paper claims.)
BACKGROUND_TABLE = (
    ("black", 15, ("black", "dark", "plain black")),
    ("dark grey", 75, ("dark grey", "dark gray", "charcoal", "dark")),
    ("light grey", 185, ("light grey", "light gray", "pale grey", "light")),
    ("white", 240, ("white", "plain white", "light")),
)
BACKGROUNDS = tuple(b[0] for b in BACKGROUND_TABLE)

MAX_OBJECTS = 3

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
HELDOUT_INDEX = {(COLOURS.index(c), SHAPES.index(s)): i
                 for i, (c, s) in enumerate(HELDOUT_COMBOS)}

SPLIT_IDS = {"train": 0, "test": 1, "heldout": 2}
DEFAULT_NUM_EXAMPLES = {"train": 1_000_000, "test": 10_000, "heldout": 10_000}


def _combo_table(kind: str) -> np.ndarray:
  """Allowed colour-shape pairs: bool [len(COLOURS), len(SHAPES)]."""
  held = np.zeros((len(COLOURS), len(SHAPES)), bool)
  for c, s in HELDOUT_INDEX:
    held[c, s] = True
  return {"seen": ~held, "heldout": held, "all": np.ones_like(held)}[kind]


# (colour, shape) pairs of each combination set: 'seen' (all but held out), 'heldout', 'all'.
COMBO_PAIRS = {kind: tuple((int(c), int(s)) for c, s in np.argwhere(_combo_table(kind)))
               for kind in ("seen", "heldout", "all")}


def split_combos(split: str) -> tuple[str, str]:
  """(main object, other objects) combination sets (COMBO_PAIRS keys) of a split."""
  return {"train": ("seen", "seen"), "test": ("all", "all"), "heldout": ("heldout", "all")}[split]
