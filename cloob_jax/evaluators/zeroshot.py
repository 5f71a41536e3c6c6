"""Zero-shot classification by prompt ensembles (CLIP's protocol, used by CLOOB).

    evals.imagenet = ConfigDict(type='zeroshot_classification', log_steps=5000,
                                data=dict(path='tfds:imagenet2012', split='validation'))

Each class is embedded as the normalised mean of its normalised prompt embeddings (every
template filled with the class name); an image is assigned the class of highest cosine
similarity. Yields top1, top5 (when there are at least 5 classes) and mean_per_class_recall,
as fractions, and class_cosine: the mean cosine between distinct class embeddings, the text
side's view of the task (near 1, the text tower cannot tell the class names apart). Class
embeddings are computed once per (class names, templates) and model
weights, and shared between evaluators through the embedder (ImageNet and ImageNet V2).

On several processes each one reads, embeds and scores only its share of the images
(`Embedder.share`); what crosses between processes is the per-class tallies of correct
predictions (summed) and the top-5 predictions (ints, gathered for `predictions`), never
images or image embeddings. The class embeddings are computed by every process alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cloob_jax.evaluators import common
from cloob_jax.evaluators import metrics
from cloob_jax.evaluators import prompts
from cloob_jax.evaluators import sources


def class_embeddings(embedder, variables, classnames: Sequence[str], templates: Sequence[str],
                     desc: str | None = None) -> np.ndarray:
  """Prompt-ensemble class embeddings: float32 [num_classes, d], unit rows (cached)."""
  classnames, templates = tuple(classnames), tuple(templates)

  def compute():
    texts = [prompts.fill(t, c) for c in classnames for t in templates]
    emb = embedder.embed_strings(variables, texts, desc=desc)
    emb = emb.reshape(len(classnames), len(templates), -1).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)

  return embedder.cached(variables, ("zeroshot", classnames, templates), compute)


@common.register("zeroshot_classification")
class ZeroShotClassification(common.Evaluator):
  """Zero-shot top-1/top-5/mean per-class recall on one labelled dataset.

  Args:
    name: the task name; metrics are '{name}/top1' etc.
    embedder: a common.Embedder.
    data: a data config (see sources) or a sources.ClassificationSource.
    num_threads: image decoding threads (default: CPUs + 2, at most 16).

  After `run`, `predictions` holds {'labels': int [n], 'top5': int [n, k]} of the last run.
  """

  def __init__(self, name: str, embedder, *, data, num_threads: int | None = None):
    super().__init__(name, embedder)
    sources.check(data)  # DataUnavailable now, not at the first run
    self._data = data
    self._source = None
    self.num_threads = num_threads
    self.predictions: dict[str, np.ndarray] | None = None

  def source(self) -> sources.ClassificationSource:
    """The dataset, opened (or rendered) at the first use and kept."""
    if self._source is None:
      self._source = sources.classification_source(self._data, self.embedder.image_size, self.name)
    return self._source

  def run(self, variables) -> common.Metrics:
    source = self.source()
    weights = class_embeddings(self.embedder, variables, source.classnames, source.templates,
                               desc=f"{self.name} prompts")
    # Each process scores its share of the images; the per-class tallies (a few ints per
    # class) are summed over processes, and the predictions (ints) gathered.
    emb, labels = common.embed_labelled_share(self.embedder, variables, source, desc=self.name,
                                              num_threads=self.num_threads)
    top = metrics.topk_indices(emb, weights, 5)
    counts = self.embedder.sum_over_processes(
        metrics.classification_counts(top, labels, len(weights)))
    n = len(source)
    self.predictions = {"labels": self.embedder.gather(labels, n),
                        "top5": self.embedder.gather(top, n)}
    for metric, value in metrics.metrics_from_counts(counts).items():
      yield self._metric(metric, value)
    yield self._metric("class_cosine", metrics.class_cosine(weights))
