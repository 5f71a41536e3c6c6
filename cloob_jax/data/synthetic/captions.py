"""Captions of the synthetic world: random, true alt-text for a scene.

Captions read like real alt-text: many templates and synonyms, and each caption
mentions only a random subset of the attributes and objects ("crimson disc",
"two blue squares on the left", "a photo of three shapes on a white background"),
but is always true of its scene: objects are grouped by the attributes the caption mentions
and every group is described with its exact size.

How often a caption mentions each attribute is `CAPTION_MENTION`, overridable per world
(`SyntheticWorld(mention={'position': 0.6})`, or `--config.data.caption_mention.position=0.6`
with configs/demo.py): the mix steers which features contrastive training picks up first.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cloob_jax.data.synthetic import scenes
from cloob_jax.data.synthetic import world

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


_COUNT_WORDS = {2: ("two", "2", "a pair of"), 3: ("three", "3")}
_PREFIXES = ("", "", "", "a photo of ", "an image of ", "a picture of ", "a drawing of ",
             "a render of ", "clip art of ", "an illustration of ", "a simple graphic of ",
             "a snapshot of ", "a scene with ", "a close-up of ")
_CONNECTORS_2 = (" and ", " and ", " with ", ", ", " alongside ", " beside ")
_BACKGROUND_FORMS = (" on a {} background", " against a {} backdrop", ", {} background",
                     " in front of a {} background")


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _colour_word(d: scenes.Draws, colour: int) -> str:
  syn = world.COLOUR_SYNONYMS[world.COLOURS[colour]]
  return syn[0] if d.uniform() < 0.5 else d.pick(syn[1:])


def _noun(d: scenes.Draws, shape: int | None, plural: bool) -> str:
  if shape is None:
    forms = d.pick(world.GENERIC_NOUNS)
  else:
    nouns = world.SHAPE_NOUNS[world.SHAPES[shape]]
    forms = nouns[0] if d.uniform() < 0.5 else d.pick(nouns[1:])
  return forms[plural]


def _group_position(d: scenes.Draws, members: Sequence[scenes.SceneObject]) -> str | None:
  cells = {o.position for o in members}
  if len(cells) == 1:
    return d.pick(world.CELL_PHRASES[cells.pop()])
  options = []
  rows, cols = {c // 3 for c in cells}, {c % 3 for c in cells}
  if len(cols) == 1:
    options += world.COLUMN_PHRASES[cols.pop()]
  if len(rows) == 1:
    options += world.ROW_PHRASES[rows.pop()]
  return d.pick(options) if options else None


def _phrase(d: scenes.Draws, members: Sequence[scenes.SceneObject],
            mention: dict[str, bool]) -> str:
  """A noun phrase for all the objects that share the mentioned attributes."""
  first, n = members[0], len(members)
  colour = _colour_word(d, first.colour) if mention["colour"] else None
  colour_after = colour is not None and d.uniform() < 0.12  # "a circle in red"
  words = []
  if mention["size"]:
    words.append(d.pick(world.SIZE_WORDS[world.SIZES[first.size]]))
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


def caption(scene: scenes.Scene, rng: np.random.Generator | scenes.Draws, detailed: bool = False,
            mention: Mapping[str, float] | None = None) -> str:
  """A random, true description of a scene that mentions some of its attributes and objects.

  Objects are grouped by the attributes the caption mentions and every group is
  described with its exact size ("two blue shapes" means exactly two blue objects).
  `mention` gives P(mentioned) per attribute (default CAPTION_MENTION; see caption_mention).
  With `detailed`, colour and shape of every object are always mentioned (for retrieval).
  """
  d = scenes.draws(rng)
  p = _MENTION_DETAILED if detailed else (mention or CAPTION_MENTION)
  mention = {k: d.uniform() < p[k] for k in CAPTION_MENTION}  # one draw each, in a fixed order
  groups: dict[tuple[Any, ...], list[scenes.SceneObject]] = {}
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
    text += d.pick(_BACKGROUND_FORMS).format(d.pick(world.BACKGROUND_TABLE[scene.background][2]))
  if d.uniform() < 0.3:
    text = text[0].upper() + text[1:]
  if d.uniform() < 0.4:
    text += "."
  return text
