"""Layout 'arrays': in-memory data given in the config itself (tests, notebooks, callers).

Classification reads `images` (uint8 [n, H, W, 3]), `labels` (int [n]), `classnames` (a list,
used as given) and `templates` (optional, `prompts.resolve`); retrieval reads `images` and
`captions` (one non-empty list per image). No path; never detected.
"""

from __future__ import annotations

from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import registry


@registry.register("arrays", needs_path=False)
def open_classification(data: dict, image_size: int, name: str) -> base.ArrayClassification:
  del image_size, name  # resized when batched
  return base.ArrayClassification(data["images"], data["labels"], data["classnames"],
                                  data.get("templates"))


@registry.register("arrays", task="retrieval", needs_path=False)
def open_retrieval(data: dict, image_size: int, name: str) -> base.ArrayRetrieval:
  del image_size, name
  return base.ArrayRetrieval(data["images"], data["captions"])
