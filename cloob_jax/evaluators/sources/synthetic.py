"""Layouts 'synthetic' and 'synthetic_retrieval': the embedded synthetic world, rendered.

'synthetic' reads `task` (a `synthetic.zeroshot_tasks()` name, default: the eval's name),
`num_examples` (512) and `seed` (0); the task fixes its class names, its templates may be
overridden by `templates`. 'synthetic_retrieval' reads `num_examples` (256), `seed` (0) and
`captions_per_image` (5). Both render in memory at the model's image size; no path.
"""

from __future__ import annotations

from cloob_jax.data import synthetic
from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import names
from cloob_jax.evaluators.sources import registry


class SyntheticClassification(base.ArrayClassification):
  """A zero-shot task of the synthetic world (`synthetic.task_examples`), rendered at size S."""

  def __init__(self, task: str, num_examples: int, image_size: int, seed: int = 0):
    spec = synthetic.zeroshot_tasks()[task]
    images, labels = synthetic.task_examples(task, num_examples, image_size=image_size, seed=seed)
    super().__init__(images, labels, spec.classnames, spec.templates)


@registry.register("synthetic", needs_path=False)
def open_synthetic(data: dict, image_size: int, name: str) -> SyntheticClassification:
  task = data.get("task", name)
  source = SyntheticClassification(task, int(data.get("num_examples", 512)), image_size,
                                   int(data.get("seed", 0)))
  source.classnames, source.templates = names.names_and_templates(
      data, names.Carried(source.classnames, source.templates, fixed=True),
      len(source.classnames), registry.where(name, data))
  return source


@registry.register("synthetic_retrieval", task="retrieval", needs_path=False)
def open_synthetic_retrieval(data: dict, image_size: int, name: str) -> base.ArrayRetrieval:
  del name
  images, captions = synthetic.retrieval_examples(
      int(data.get("num_examples", 256)), image_size=image_size, seed=int(data.get("seed", 0)),
      captions_per_image=int(data.get("captions_per_image", 5)))
  return base.ArrayRetrieval(images, captions)
