"""Prompt templates for zero-shot classification: the project's own sets, and how to name one.

A template is a string with one '{}' (CLIP_benchmark's files write '{c}'; both are accepted)
that a class name fills. `resolve(spec)` accepts a list of templates, the name of a set below,
'openai_imagenet' (OpenAI's 80 ImageNet templates, read from open-clip-torch when installed),
or the path of a text file with one template per line.
"""

from __future__ import annotations

import logging
from typing import Sequence

from cloob_jax import paths

# A general-purpose ensemble: varied photo conditions and framings.
DEFAULT = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of the {}.",
    "a cropped image of a {}.",
    "a bright picture of a {}.",
    "a dark picture of a {}.",
    "a low-resolution photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a snapshot of a {}.",
    "an image showing a {}.",
    "a {} in the picture.",
)

SETS = {
    "default": DEFAULT,
    "flowers102": ("a photo of a {}, a kind of flower.", "a close-up of a {} flower.",
                   "a {} in bloom.", "a picture of the flower called {}."),
    "gtsrb": ("a traffic sign: {}.", "a photo of a '{}' traffic sign.",
              "a close-up of a '{}' road sign.", "a blurry photo of a '{}' sign by the road."),
    "country211": ("a photo taken in {}.", "a picture of a place in {}.",
                   "a snapshot from a trip to {}.", "a view in {}."),
    "cars": ("a photo of a {}, a kind of car.", "a photo of my {}.", "a {} parked outside.",
             "a close-up photo of a {}."),
    "birdsnap": ("a photo of a {}, a kind of bird.", "a {} perched on a branch.",
                 "a close-up photo of a {} bird.", "a picture of the bird called {}."),
    "ucf101": ("a photo of a person doing {}.", "a video frame of someone doing {}.",
               "a still of a person during {}.", "an image of people doing {}."),
}


def _normalise(template: str) -> str:
  template = template.strip()
  if "{c}" in template:
    template = template.replace("{c}", "{}")
  if template.count("{}") != 1:
    raise ValueError(f"a template needs exactly one '{{}}' (or '{{c}}'): {template!r}")
  return template


def fill(template: str, classname: str) -> str:
  """'a photo of a {}.' + 'cat' -> 'a photo of a cat.' (no str.format: names may hold braces)."""
  return template.replace("{}", classname, 1)


def read_lines(path: str) -> list[str]:
  """Non-empty, stripped lines of a UTF-8 text file."""
  return [line.strip() for line in paths.read_text(path).splitlines() if line.strip()]


def resolve(spec: str | Sequence[str] | None) -> tuple[str, ...]:
  """Templates from a list, a set name, 'openai_imagenet', or a file path (see module doc)."""
  if spec is None:
    return DEFAULT
  if isinstance(spec, str):
    if spec in SETS:
      return SETS[spec]
    if spec == "openai_imagenet":
      return openai_imagenet()
    if not (paths.check(spec, "templates") and paths.exists(spec)):
      raise ValueError(f"templates {spec!r}: neither a set ({', '.join(sorted(SETS))}, "
                       "openai_imagenet) nor an existing file")
    spec = read_lines(spec)
  templates = tuple(_normalise(t) for t in spec)
  if not templates:
    raise ValueError("empty list of templates")
  return templates


def openai_imagenet() -> tuple[str, ...]:
  """OpenAI's 80 ImageNet templates (the paper's ImageNet protocol), via open-clip-torch."""
  try:
    from open_clip import zero_shot_metadata  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("templates 'openai_imagenet' need open-clip-torch; using this project's "
                    "default set instead (numbers will differ from the paper's protocol)")
    return DEFAULT
  return tuple(_normalise(t("{}")) for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
