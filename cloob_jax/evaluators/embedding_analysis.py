"""The analyses of the CLOOB paper, on the embeddings of matched image-caption pairs.

    evals.analysis = ConfigDict(type='embedding_analysis', log_steps=5000,
                                data=dict(source='synthetic_retrieval', num_examples=1024))

Pairs are (image i, its first caption). Yields, for images and texts separately:
  {image,text}_effective_eigenvalues  smallest k whose top-k covariance eigenvalues reach
                                      `fraction` (0.99) of the trace; CLOOB's grows in training
  {image,text}_uniformity             Wang & Isola: log mean_{i!=j} exp(-2 ||x_i - x_j||^2)
  {image,text}_ajne                   Ajne's statistic extended to the sphere by Prentice:
                                      n/4 - sum_{i<j} angle_ij / (n pi); about 1/4 when uniform,
                                      lower = more uniform (the paper's measure)
  {image,text}_rayleigh               Rayleigh's n d ||mean||^2; about d when uniform
and for the pairs: alignment (Wang & Isola: mean ||x_i - y_i||^2).

On several processes each one embeds its share of the images, and the image embeddings are
gathered to every process (`common.embed_captioned`), which computes the same analyses.
"""

from __future__ import annotations

from cloob_jax.evaluators import common
from cloob_jax.evaluators import metrics
from cloob_jax.evaluators import sources


def analyse(image_emb, text_emb, fraction: float = 0.99) -> dict[str, float]:
  """All the analyses for paired embeddings image_emb, text_emb [n, d] (row i with row i)."""
  out = {}
  for side, x in (("image", image_emb), ("text", text_emb)):
    out[f"{side}_effective_eigenvalues"] = metrics.effective_eigenvalues(x, fraction)
    out[f"{side}_uniformity"] = metrics.uniformity(x)
    out[f"{side}_ajne"] = metrics.ajne_statistic(x)
    out[f"{side}_rayleigh"] = metrics.rayleigh_statistic(x)
  out["alignment"] = metrics.alignment(image_emb, text_emb)
  return out


@common.register("embedding_analysis")
class EmbeddingAnalysis(common.Evaluator):
  """Effective eigenvalues, uniformity and alignment of image and text embeddings.

  Args:
    name: the task name.
    embedder: a common.Embedder.
    data: a retrieval data config (captioned images) or a sources.RetrievalSource.
    fraction: the share of the covariance trace for effective eigenvalues.
  """

  def __init__(self, name: str, embedder, *, data, fraction: float = 0.99,
               num_threads: int | None = None):
    super().__init__(name, embedder)
    sources.check(data)
    self._data = data
    self._source = None
    self.fraction = float(fraction)
    self.num_threads = num_threads

  def run(self, variables) -> common.Metrics:
    if self._source is None:
      self._source = sources.retrieval_source(self._data, self.embedder.image_size, self.name)
    source = self._source
    # Only the first caption of each image: the analyses need pairs.
    images, texts, _ = common.embed_captioned(self.embedder, variables, _FirstCaption(source),
                                              desc=self.name, num_threads=self.num_threads)
    for metric, value in analyse(images, texts, self.fraction).items():
      yield self._metric(metric, value)


class _FirstCaption(sources.RetrievalSource):
  """A view of a RetrievalSource with one caption per image."""

  def __init__(self, base: sources.RetrievalSource):
    self.base = base
    self.captions = [caps[:1] for caps in base.captions]

  def get(self, index):
    return self.base.get(index)

  def arrays(self, image_size):
    return self.base.arrays(image_size)
