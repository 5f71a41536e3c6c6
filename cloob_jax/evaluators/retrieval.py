"""Image-text retrieval: recall@k in both directions.

    evals.retrieval = ConfigDict(type='retrieval', log_steps=5000,
                                 data=dict(source='synthetic_retrieval', num_examples=512))

Image -> text counts an image as found when any of its captions is among the k nearest
texts; text -> image counts a caption when its own image is among the k nearest images.
Yields 'image_to_text_recall@k' and 'text_to_image_recall@k' for each k, as fractions.

On several processes each one reads and embeds its share of the images; recall@k ranks every
query against the whole gallery, so the image embeddings ([n, d] floats) are gathered to every
process, which all embed every caption (`common.embed_captioned`) and compute the same recalls.
"""

from __future__ import annotations

from typing import Sequence

from cloob_jax.evaluators import common
from cloob_jax.evaluators import metrics
from cloob_jax.evaluators import sources


@common.register("retrieval")
class Retrieval(common.Evaluator):
  """Recall@k of image->text and text->image retrieval on one captioned dataset.

  Args:
    name: the task name.
    embedder: a common.Embedder.
    data: a data config (synthetic_retrieval, records, arrays) or a sources.RetrievalSource.
    ks: the cut-offs k.
    num_threads: image decoding threads.
  """

  def __init__(self, name: str, embedder, *, data, ks: Sequence[int] = (1, 5, 10),
               num_threads: int | None = None):
    super().__init__(name, embedder)
    sources.check(data)
    self._data = data
    self._source = None
    self.ks = tuple(int(k) for k in ks)
    self.num_threads = num_threads

  def source(self) -> sources.RetrievalSource:
    if self._source is None:
      self._source = sources.retrieval_source(self._data, self.embedder.image_size, self.name)
    return self._source

  def run(self, variables) -> common.Metrics:
    images, texts, text_image = common.embed_captioned(
        self.embedder, variables, self.source(), desc=self.name, num_threads=self.num_threads)
    for metric, value in metrics.retrieval_recalls(images, texts, text_image, self.ks).items():
      yield self._metric(metric, value)
