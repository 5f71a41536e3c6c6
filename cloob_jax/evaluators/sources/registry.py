"""The registry of eval data layouts, and the resolution of a data config to a source.

A layout registers its name, the task it serves ('classification' or 'retrieval'), its
constructor and, when a path can be recognised as its, a detector:

    @registry.register("npz", detect=lambda path, split: ...)
    def open_npz(data: dict, image_size: int, name: str) -> base.ClassificationSource:
      ...  # registry.where(name, data) names the eval and its data in error messages

The constructor gets the data config (a plain dict, `source` filled in when detected) and
returns the whole dataset with its class names and templates (`names.names_and_templates`);
`classification_source` then checks the labels against the names and takes the
`num_examples` subset. Nothing else needs an edit: the evaluators, the eval binary and
`source=NAME` in configs find the layout here.

Detection (`detect_source`): for a `path=` without `source=`, the detectors are tried in
ascending `order` (ties: in registration order) and the first that says yes names the layout.
The built-in layouts and their orders:

  10  tfds            'tfds:NAME', or a bare name that is no existing path
  20  records         a folder with a records manifest.json (retrieval)
  30  clip_benchmark  a .tar file; a folder with .tar shards in it, in its split folder or in
                      one of its sub-folders
  50  (a new layout, by default)
  90  folder          any other folder (the fallback)

'synthetic', 'synthetic_retrieval' and 'arrays' are never detected: the config names them,
and they need no path (`needs_path=False`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from cloob_jax import config_lib
from cloob_jax import paths
from cloob_jax.evaluators.sources import base

TASKS = ("classification", "retrieval")
DEFAULT_ORDER = 50

Detector = Callable[[str, "str | None"], bool]
Opener = Callable[[dict, int, str], Any]


@dataclasses.dataclass(frozen=True)
class Layout:
  """One registered layout: see the module docstring."""
  name: str
  task: str
  open: Opener
  detect: Detector | None = None
  order: int = DEFAULT_ORDER
  needs_path: bool = True


_LAYOUTS: dict[tuple[str, str], Layout] = {}  # (task, name) -> layout, in registration order


def register(name: str, *, task: str = "classification", detect: Detector | None = None,
             order: int = DEFAULT_ORDER, needs_path: bool = True):
  """Decorator: registers `open(data, image_size, name) -> source` as layout `name`.

  Args:
    name: the `source=` of data configs; one name may serve both tasks (two registrations).
    task: 'classification' (returns a base.ClassificationSource) or 'retrieval'.
    detect: `detect(path, split) -> bool`, True when `path` is in this layout (cheap: looks
      at names, not contents), or None for a layout that the config must name.
    order: where `detect` is tried among the others' (see the module docstring).
    needs_path: False for a layout whose data is no path (synthetic, arrays).
  """
  if task not in TASKS:
    raise ValueError(f"layout {name!r}: task={task!r}, expected one of {', '.join(TASKS)}")

  def decorate(open_fn: Opener) -> Opener:
    if (task, name) in _LAYOUTS:
      raise ValueError(f"a {task} layout {name!r} is already registered")
    _LAYOUTS[(task, name)] = Layout(name, task, open_fn, detect, order, needs_path)
    return open_fn

  return decorate


def unregister(name: str, task: str | None = None) -> None:
  """Removes layout `name` (of `task`, or of every task); KeyError when none is registered."""
  keys = [k for k in _LAYOUTS if k[1] == name and task in (None, k[0])]
  if not keys:
    raise KeyError(f"no layout {name!r} registered" + (f" for {task}" if task else ""))
  for key in keys:
    del _LAYOUTS[key]


def layouts(task: str | None = None) -> list[Layout]:
  """The registered layouts (of `task`), in registration order."""
  return [layout for layout in _LAYOUTS.values() if task in (None, layout.task)]


def lookup(name: str, task: str, where: str) -> Layout:
  """The layout `name` of `task`, or ValueError naming the known ones."""
  if (task, name) not in _LAYOUTS:
    known = ", ".join(sorted(layout.name for layout in layouts(task)))
    raise ValueError(f"{where}: unknown {task} source {name!r} (known: {known})")
  return _LAYOUTS[(task, name)]


def detect_source(path: str, split: str | None = None) -> str:
  """The name of the layout at `path`: the first detector to recognise it (module docstring).

  Raises:
    FileNotFoundError: nothing is at `path` and no layout takes it as a name.
    ValueError: `path` is a file, or a folder, that no layout recognises.
  """
  detectors = sorted((layout for layout in _LAYOUTS.values() if layout.detect),
                     key=lambda layout: layout.order)  # stable: ties in registration order
  for layout in detectors:
    if layout.detect(path, split):
      return layout.name
  where = paths.path(path, "eval data path")
  if not where.exists():
    raise FileNotFoundError(f"no dataset at {path!r}")
  if not where.is_dir():
    raise ValueError(f"{path} is a file; expected a dataset folder, a .tar shard or a TFDS name")
  raise ValueError(f"{path}: no eval data layout recognises this folder "
                   f"({', '.join(dict.fromkeys(layout.name for layout in detectors))})")


def check(data) -> None:
  """Raises DataUnavailable when the data config has not been located (cheap: no reading)."""
  if isinstance(data, (base.ClassificationSource, base.RetrievalSource)):
    return
  data = config_lib.as_dict(data)
  source = data.get("source")
  if any(layout.name == source and not layout.needs_path for layout in _LAYOUTS.values()):
    return
  if not data.get("path"):
    raise base.DataUnavailable(data.get("hint") or "no path given")


def where(name: str, data: dict) -> str:
  """'imagenet (tfds: tfds:imagenet2012)': the eval's name and its data, for messages."""
  return f"{name} ({data.get('source')}: {data.get('path') or data.get('task')})"


def _resolve(data, task: str, name: str) -> tuple[Layout, dict]:
  check(data)
  data = config_lib.as_dict(data)  # a copy
  data["source"] = data.get("source") or detect_source(data["path"], data.get("split"))
  return lookup(data["source"], task, where(name, data)), data


def classification_source(data, image_size: int,
                          name: str = "data") -> base.ClassificationSource:
  """A ClassificationSource from a data config (see the package docstring): its layout's,
  with the labels checked against the class names and `num_examples` taken evenly spread."""
  if isinstance(data, base.ClassificationSource):
    return data
  layout, data = _resolve(data, "classification", name)
  source = layout.open(data, image_size, name)
  if hasattr(source, "labels"):
    base.check_labels(np.asarray(source.labels), len(source.classnames), where(name, data))
  indices = base.subset_indices(len(source), data.get("num_examples"))
  return source if len(indices) == len(source) else base.Subset(source, indices)


def retrieval_source(data, image_size: int, name: str = "data") -> base.RetrievalSource:
  """A RetrievalSource from a data config: 'synthetic_retrieval', 'records', 'arrays' or any
  registered retrieval layout (which reads `num_examples` itself)."""
  if isinstance(data, base.RetrievalSource):
    return data
  layout, data = _resolve(data, "retrieval", name)
  return layout.open(data, image_size, name)
