"""The class-name and prompt-template policy of every eval data layout, in one function.

A layout opens its data, collects what the dataset itself carries (`Carried`: its label names,
the files CLIP_benchmark puts beside its shards, a synthetic task's fixed names and prompts),
and asks `names_and_templates` for the names and templates to use. The config's keys
(`classnames`, `default_classnames`, `templates`, `default_templates`) name a list, a built-in
(`classnames.builtin`, `prompts.SETS`) or a text file with one entry per line.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

from cloob_jax import paths
from cloob_jax.evaluators import classnames as classnames_lib
from cloob_jax.evaluators import prompts


@dataclasses.dataclass(frozen=True)
class Carried:
  """What a dataset carries about its classes.

  Attributes:
    classnames: its own label names in label order (folder names, TFDS label names, a
      classnames.txt beside the data), or None.
    templates: its own prompt templates (a file beside the data), or None.
    as_written: the names are written for prompts (CLIP_benchmark's classnames.txt): used as
      they are, not humanised.
    fixed: the names are the task's definition (the synthetic world): the config's class-name
      keys are not read.
  """
  classnames: Sequence[str] | None = None
  templates: Sequence[str] | None = None
  as_written: bool = False
  fixed: bool = False


def named_list(spec, what: str) -> tuple[str, ...]:
  """A list, a built-in list name, or a file with one entry per line."""
  if isinstance(spec, str):
    if paths.check(spec, what) and paths.exists(spec):
      return tuple(prompts.read_lines(spec))
    try:
      return classnames_lib.builtin(spec)
    except ValueError as e:
      raise ValueError(f"{what} {spec!r}: neither a file nor a built-in list ({e})") from e
  return tuple(str(s) for s in spec)


def names_and_templates(data: Mapping[str, Any], carried: Carried, num_classes: int,
                        where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(class names, templates) of a dataset, from its data config and what it carries.

  Class names, the first found of:
    0. the dataset's names when `carried.fixed` (a synthetic task), the config's ignored;
    1. the config's `classnames` (a list, a built-in name of classnames.py, or a file);
    2. the dataset's own names when readable (not numbers nor WordNet ids): ISO country codes
       become country names; other names are humanised ('Polar_bear' -> 'Polar bear',
       'ApplyEyeMakeup' -> 'Apply Eye Makeup') unless `carried.as_written`;
    3. the config's `default_classnames` (a list, built-in name or file);
    4. the dataset's own names even if unreadable, with a warning;
  else ValueError. The count must equal `num_classes` (ValueError otherwise).

  Templates, the first found of:
    1. the config's `templates` (a list, a set of prompts.SETS, 'openai_imagenet', or a file);
    2. the dataset's own (`carried.templates`);
    3. the config's `default_templates`;
    4. prompts.DEFAULT.
  '{c}' is accepted for '{}' throughout (`prompts.resolve`).
  """
  names = _classnames(data, carried, where)
  if len(names) != num_classes:
    raise ValueError(f"{where}: {len(names)} class names for {num_classes} classes")
  if data.get("templates") is not None:
    templates = prompts.resolve(data["templates"])
  elif carried.templates:
    templates = prompts.resolve(list(carried.templates))
  else:
    templates = prompts.resolve(data.get("default_templates"))
  return names, templates


def _classnames(data: Mapping[str, Any], carried: Carried, where: str) -> tuple[str, ...]:
  """Steps 0-4 of the class-name order in `names_and_templates`."""
  own = list(carried.classnames) if carried.classnames else None
  if carried.fixed and own:
    return tuple(own)
  if data.get("classnames") is not None:
    return named_list(data["classnames"], "classnames")
  if own and classnames_lib.readable(own):
    return tuple(classnames_lib.from_codes(own) or
                 [n if carried.as_written else classnames_lib.humanize(n) for n in own])
  if data.get("default_classnames") is not None:
    return named_list(data["default_classnames"], "default_classnames")
  if own:
    logging.warning("%s: class names %s... are not words; name a file with classnames=FILE",
                    where, own[:3])
    return tuple(own)
  raise ValueError(f"{where}: the dataset carries no class names; pass classnames=FILE")
