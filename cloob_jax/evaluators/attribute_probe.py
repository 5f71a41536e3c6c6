"""The explaining-away probe: what a frozen embedding of the synthetic world still holds.

    evals.attributes = ConfigDict(type='attribute_probe', log_steps=1000,
                                  num_examples=1024, seed=0)

CLOOB's claim (Fürst et al. 2022) is that CLIP's InfoNCE lets a few features explain the
pairing away and neglects the rest, while CLOOB's retrieval keeps them. Zero-shot top-1 asks
whether a feature is aligned with its words; this asks whether it is still in the embedding
at all. A linear probe (`linear_probe.probe`: L2 chosen on a validation split, refit, scored
on a test split) is fit per attribute on the image embeddings and, separately, on the caption
embeddings of scenes of the training distribution (`synthetic.attribute_examples`: one
detailed caption each): colour, shape, size and grid position on `num_examples` one-object
scenes, the object count on `num_examples` scenes of one to three objects. Each set's split
is seeded by `seed`: half train, a quarter validation, a quarter test.

Yields image/<attribute>/top1 and text/<attribute>/top1 (test accuracy); chance is
1 / number of classes (8 colours, 8 shapes, 2 sizes, 3 counts, 9 positions). The embedding
analyses (`embedding_analysis`: covariance eigenvalues, uniformity) go beside it in the
synthetic suite. Captions mention size and position only sometimes, so the text probe's
ceiling on those is below 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cloob_jax.data import synthetic
from cloob_jax.evaluators import common
from cloob_jax.evaluators import linear_probe
from cloob_jax.evaluators.sources import base


@common.register("attribute_probe")
class AttributeProbe(common.Evaluator):
  """Linear probes of every synthetic-world attribute on frozen image and text embeddings.

  Args:
    name: the task name.
    embedder: a common.Embedder.
    num_examples: scenes rendered per set (split 2:1:1 into train, validation and test).
    seed: the scenes' seed and the split's.
    attributes: which of synthetic.ATTRIBUTES to probe (default: all).
    l2_grid, max_iter: as linear_probe.
  """

  def __init__(self, name: str, embedder, *, num_examples: int = 1024, seed: int = 0,
               attributes: Sequence[str] | None = None,
               l2_grid: Sequence[float] = linear_probe.DEFAULT_L2_GRID, max_iter: int = 300,
               num_threads: int | None = None):
    super().__init__(name, embedder)
    self.attributes = tuple(attributes or synthetic.ATTRIBUTES)
    unknown = [a for a in self.attributes if a not in synthetic.ATTRIBUTES]
    if unknown:
      raise ValueError(f"eval {name!r}: unknown attributes {unknown}; choose from "
                       f"{list(synthetic.ATTRIBUTES)}")
    if int(num_examples) < 16:
      raise ValueError(f"eval {name!r}: num_examples={num_examples} is too few to split into "
                       "train, validation and test")
    self.num_examples, self.seed = int(num_examples), int(seed)
    self.l2_grid, self.max_iter = tuple(float(v) for v in l2_grid), int(max_iter)
    self.num_threads = num_threads
    self._data = None

  def _open(self):
    """{single_object: (source, labels)} for the sets the attributes need."""
    if self._data is None:
      self._data = {}
      for single in (True, False):
        if any((a in synthetic.SCENE_ATTRIBUTES) != single for a in self.attributes):
          images, captions, labels = synthetic.attribute_examples(
              self.num_examples, image_size=self.embedder.image_size, seed=self.seed,
              single_object=single)
          self._data[single] = base.ArrayRetrieval(images, [[c] for c in captions]), labels
    return self._data

  def run(self, variables) -> common.Metrics:
    order = np.random.default_rng([self.seed, 1]).permutation(self.num_examples)
    n_train, n_val = self.num_examples // 2, self.num_examples // 4
    parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    results = {}
    for source, labels in self._open().values():
      image_emb, text_emb, _ = common.embed_captioned(self.embedder, variables, source,
                                                      desc=self.name,
                                                      num_threads=self.num_threads)
      for side, emb in (("image", np.asarray(image_emb)), ("text", np.asarray(text_emb))):
        for attribute in (a for a in self.attributes if a in labels):
          y = labels[attribute]
          train, val, test = ((emb[p], y[p]) for p in parts)
          results[f"{side}/{attribute}/top1"] = linear_probe.probe(
              train, val, test, synthetic.ATTRIBUTES[attribute], self.l2_grid,
              self.max_iter)["top1"]
    for side in ("image", "text"):  # in a fixed order: image then text, ATTRIBUTES' order
      for attribute in self.attributes:
        yield self._metric(f"{side}/{attribute}/top1", results[f"{side}/{attribute}/top1"])
