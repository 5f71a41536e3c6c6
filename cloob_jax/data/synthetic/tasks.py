"""Zero-shot evaluation sets of the synthetic world: classification tasks and retrieval.

`zeroshot_tasks()` defines the tasks (class names, prompt templates, chance level),
`task_examples(name, n)` renders their images and labels deterministically (balanced
classes), and `retrieval_examples(n)` gives images with several detailed captions each for
image-text retrieval. The tasks, with chance:
  colour (8 classes, 1/8)   one object; the easy feature.
  shape (8, 1/8)            one object; hard when small.
  size (2, 1/2)             one object, small vs large.
  position (9, 1/9)         one object, its 3x3 grid cell.
  count (3, 1/3)            one to three objects.
  heldout_combination (8, 1/8)  one object of a HELDOUT_COMBOS pair; needs colour and
                            shape composed (either alone caps accuracy at 1/2).
Except heldout_combination, task images use only the combinations seen in training.

Like the training examples, every image is a pure function of (seed, task, index), drawn
from seed streams of their own, apart from the splits'.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from cloob_jax.data.synthetic import captions
from cloob_jax.data.synthetic import rendering
from cloob_jax.data.synthetic import scenes
from cloob_jax.data.synthetic import world

_TASK_STREAM = 100  # seed stream of zero-shot task images: [seed, 100 + task id, i]
_RETRIEVAL_STREAM = 200  # seed stream of retrieval examples
_ATTRIBUTE_STREAM = 300  # seed stream of attribute-probe examples
# What the attribute probe reads off frozen embeddings: name -> number of classes. Colour,
# shape, size and grid position are those of the only object of a one-object scene (in a scene
# of several, "the" colour is not defined); count is that of scenes of one to three objects.
ATTRIBUTES = {"colour": len(world.COLOURS), "shape": len(world.SHAPES),
              "size": len(world.SIZES), "position": len(world.POSITIONS),
              "count": world.MAX_OBJECTS}
SCENE_ATTRIBUTES = ("count",)  # the others: of a one-object scene


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
      _task("colour", world.COLOURS,
            ("a photo of a {} shape.", "a {} object.", "something {}.",
             "an image of a {} thing.", "a drawing of a {} figure.", "a {} shape on a background."),
            "colour", description="colour of a single object: the easy feature"),
      _task("shape", world.SHAPES, object_templates, "shape",
            description="shape of a single object, small or large"),
      _task("size", world.SIZES,
            ("a photo of a {} shape.", "a {} object.", "an image of a {} thing.",
             "a drawing of a {} figure."),
            "size", description="small vs large single object"),
      _task("position", [p[0] for p in world.CELL_PHRASES],
            ("a shape {}.", "a photo of an object {}.", "an image with one shape {}.",
             "a drawing of something {}."),
            "position", description="3x3 grid cell of a single object"),
      _task("count", ("a single shape", "two shapes", "three shapes"),
            ("a photo of {}.", "an image of {}.", "{}.", "a picture with {}.",
             "a drawing of {}."),
            "count", single_object=False, label_offset=1,
            description="number of objects (1-3) in a scene"),
      _task("heldout_combination", [f"{c} {s}" for c, s in world.HELDOUT_COMBOS],
            object_templates, "heldout_combo", combos="heldout",
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
      c, s = world.HELDOUT_COMBOS[labels[i]]
      fixed.update(colour=world.COLOURS.index(c), shape=world.SHAPES.index(s))
    elif task.name == "count":
      fixed["num_objects"] = int(labels[i]) + 1
    else:
      fixed[task.label_field] = int(labels[i])
    scene = scenes.sample_scene(rng, main_combos=task.combos, other_combos="seen", **fixed)
    assert task.label(scenes.scene_labels(scene)) == labels[i]
    images[i] = rendering.render(scene, image_size)
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
  texts = []
  for i in range(num_examples):
    scene = scenes.sample_scene(np.random.default_rng([seed, _RETRIEVAL_STREAM, i]), "all", "all")
    images[i] = rendering.render(scene, image_size)
    texts.append([captions.caption(scene, np.random.default_rng([seed, _RETRIEVAL_STREAM, i, k]),
                                   detailed=True) for k in range(captions_per_image)])
  return images, texts


def attribute_examples(num_examples: int, image_size: int = 64, seed: int = 0,
                       single_object: bool = True
                       ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
  """Scenes of the training distribution (seen colour-shape pairs), each with one detailed
  caption (colour and shape of every object always; size, position, background sometimes).

  single_object: one object per scene, labelled with the attributes not in SCENE_ATTRIBUTES
  (those of its object); else one to three objects, labelled with SCENE_ATTRIBUTES.

  Returns:
    images: uint8 [num_examples, image_size, image_size, 3]; captions: num_examples str;
    labels: {attribute: int32 [num_examples]} (count: objects - 1).
  """
  names = [a for a in ATTRIBUTES if (a in SCENE_ATTRIBUTES) != single_object]
  stream = [seed, _ATTRIBUTE_STREAM, int(single_object)]
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  texts, labels = [], {name: np.empty((num_examples,), np.int32) for name in names}
  for i in range(num_examples):
    scene = scenes.sample_scene(np.random.default_rng(stream + [i]), "seen", "seen",
                                num_objects=1 if single_object else None)
    images[i] = rendering.render(scene, image_size)
    texts.append(captions.caption(scene, np.random.default_rng(stream + [i, 0]), detailed=True))
    fields = scenes.scene_labels(scene)
    for name in names:
      labels[name][i] = int(fields[name]) - (1 if name == "count" else 0)
  return images, texts, labels
