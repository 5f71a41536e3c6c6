"""Evaluation metrics on embeddings, in numpy: classification, retrieval, embedding analyses.

All functions take host arrays (float32 embeddings [n, d], int labels) and return python
floats or numpy arrays. Score matrices are computed in row blocks, so memory stays
O(block x candidates) even for ImageNet-sized evaluations.

Accuracies and recalls are fractions in [0, 1]. Ties in a ranking are broken in favour of
the lower index (a stable sort), so hand-computed expectations are unambiguous.
"""

from __future__ import annotations

import math

import numpy as np

_BLOCK = 2048  # rows of a score matrix computed at once


def _blocks(n: int, block: int = _BLOCK):
  for start in range(0, n, block):
    yield start, min(start + block, n)


def topk_indices(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k highest-scoring keys per query, best first.

  Args:
    queries: [n, d]; keys: [m, d]; scores are dot products.
    k: number of indices to return (clipped to m).

  Returns:
    int32 [n, min(k, m)].
  """
  queries = np.asarray(queries, np.float32)
  keys = np.asarray(keys, np.float32)
  k = min(k, keys.shape[0])
  out = np.empty((queries.shape[0], k), np.int32)
  for lo, hi in _blocks(queries.shape[0]):
    scores = queries[lo:hi] @ keys.T
    # Stable sort of the negated scores: equal scores keep index order.
    out[lo:hi] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return out


def classification_counts(topk: np.ndarray, labels: np.ndarray,
                          num_classes: int) -> dict[str, np.ndarray]:
  """Per-class tallies of a labelled set, or of one process's share of it.

  The tallies of a set are the sums of its shares' (`Embedder.sum_over_processes`), and
  `metrics_from_counts` turns them into the metrics of `classification_metrics`.

  Args:
    topk: int [n, k] predicted classes, best first (k >= 5 for top-5); n may be 0.
    labels: int [n] true classes in [0, num_classes).
    num_classes: number of classes of the task.

  Returns:
    int64 [num_classes] arrays: 'examples' (per true class), 'top1' (of those, predicted
    first) and, when num_classes >= 5, 'top5' (among the first five).
  """
  topk = np.asarray(topk)
  labels = np.asarray(labels, np.int64)
  if topk.shape[0] != labels.shape[0]:
    raise ValueError(f"{topk.shape[0]} predictions for {labels.shape[0]} labels")
  hit1 = topk[:, 0] == labels
  out = {"examples": np.bincount(labels, minlength=num_classes),
         "top1": np.bincount(labels[hit1], minlength=num_classes)}
  if num_classes >= 5:
    if topk.shape[1] < 5:
      raise ValueError(f"top-5 needs 5 predictions per example, got {topk.shape[1]}")
    hit5 = (topk[:, :5] == labels[:, None]).any(axis=1)
    out["top5"] = np.bincount(labels[hit5], minlength=num_classes)
  return {k: v.astype(np.int64) for k, v in out.items()}


def metrics_from_counts(counts: dict[str, np.ndarray]) -> dict[str, float]:
  """{'top1', 'top5' (with counts['top5']), 'mean_per_class_recall'} of `classification_counts`
  tallies; the per-class recall averages over the classes that occur."""
  examples = np.asarray(counts["examples"])
  total = int(examples.sum())
  if total == 0:
    raise ValueError("no examples to score")
  top1 = np.asarray(counts["top1"])
  out = {"top1": int(top1.sum()) / total}
  if "top5" in counts:
    out["top5"] = int(np.asarray(counts["top5"]).sum()) / total
  present = examples > 0
  recall = top1[present].astype(np.float64) / examples[present]
  out["mean_per_class_recall"] = float(recall.mean())
  return out


def classification_metrics(topk: np.ndarray, labels: np.ndarray,
                           num_classes: int) -> dict[str, float]:
  """Top-1, top-5 (when there are >= 5 classes) and mean per-class recall.

  Args:
    topk: int [n, k] predicted classes, best first (k >= 5 for top-5).
    labels: int [n] true classes in [0, num_classes).
    num_classes: number of classes of the task.

  Returns:
    {'top1', 'top5' (if num_classes >= 5), 'mean_per_class_recall'}; the per-class recall
    averages over the classes that occur in `labels`.
  """
  return metrics_from_counts(classification_counts(topk, labels, num_classes))


def class_cosine(class_embeddings: np.ndarray) -> float:
  """Mean cosine similarity between the embeddings of distinct classes.

  For zero-shot classifiers (unit prompt-ensemble embeddings [num_classes, d]): near 1 the
  text tower does not tell the class names apart, and the task sits at chance whatever the
  image tower knows. Needs at least 2 classes.
  """
  e = np.asarray(class_embeddings, np.float64)
  e = e / np.linalg.norm(e, axis=-1, keepdims=True)
  n = e.shape[0]
  if n < 2:
    raise ValueError(f"class_cosine needs at least 2 classes, got {n}")
  cos = e @ e.T
  return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def retrieval_recalls(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                      ks=(1, 5, 10)) -> dict[str, float]:
  """Image->text and text->image recall@k.

  Image -> text: an image counts as retrieved at k when any of its captions is among the k
  texts that score highest with it. Text -> image: a caption counts when its own image is
  among the k images that score highest with it. A candidate ranks ahead of the match only
  when it scores strictly higher (ties go to the match).

  Args:
    image_emb: [n, d] image embeddings.
    text_emb: [m, d] caption embeddings.
    text_image: int [m], the image index of each caption.
    ks: cut-offs.

  Returns:
    {'image_to_text_recall@k': ..., 'text_to_image_recall@k': ...} for each k.
  """
  image_emb = np.asarray(image_emb, np.float32)
  text_emb = np.asarray(text_emb, np.float32)
  text_image = np.asarray(text_image)
  n, m = image_emb.shape[0], text_emb.shape[0]
  if text_image.shape != (m,) or (m and (text_image.min() < 0 or text_image.max() >= n)):
    raise ValueError(f"text_image must be [{m}] indices into {n} images")
  # Image -> text: rank of an image's best-scoring caption among all captions.
  image_rank = np.empty(n, np.int64)
  for lo, hi in _blocks(n):
    scores = image_emb[lo:hi] @ text_emb.T  # [b, m]
    own = text_image[None, :] == np.arange(lo, hi)[:, None]
    best_own = np.where(own, scores, -np.inf).max(axis=1)
    image_rank[lo:hi] = (scores > best_own[:, None]).sum(axis=1)
  # Text -> image: rank of a caption's own image among all images.
  text_rank = np.empty(m, np.int64)
  for lo, hi in _blocks(m):
    scores = text_emb[lo:hi] @ image_emb.T  # [b, n]
    own = scores[np.arange(hi - lo), text_image[lo:hi]]
    text_rank[lo:hi] = (scores > own[:, None]).sum(axis=1)
  out = {}
  for k in ks:
    out[f"image_to_text_recall@{k}"] = float((image_rank < k).mean())
  for k in ks:
    out[f"text_to_image_recall@{k}"] = float((text_rank < k).mean())
  return out


def covariance_eigenvalues(x: np.ndarray) -> np.ndarray:
  """Eigenvalues of the (biased, centred) covariance of the rows of x [n, d], descending."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=0)
  cov = x.T @ x / x.shape[0]
  return np.linalg.eigvalsh(cov)[::-1].clip(min=0.0)


def effective_eigenvalues(x: np.ndarray, fraction: float = 0.99) -> int:
  """Smallest k whose k largest covariance eigenvalues reach `fraction` of the trace.

  CLOOB's measure of how much covariance structure an encoder extracts: x is [n, d]
  embeddings; returns an int in [1, d] (0 for constant embeddings).
  """
  eig = covariance_eigenvalues(x)
  total = eig.sum()
  if total <= 0:
    return 0
  cumulative = np.cumsum(eig) / total
  # A tiny tolerance so that an exact 99% is not missed to rounding.
  return int(np.searchsorted(cumulative, fraction - 1e-12) + 1)


def alignment(x: np.ndarray, y: np.ndarray) -> float:
  """Wang & Isola (2020) alignment: mean over pairs i of ||x_i - y_i||^2 (x, y [n, d])."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  return float(((x - y) ** 2).sum(axis=1).mean())


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
  """Wang & Isola (2020) uniformity: log mean_{i != j} exp(-t ||x_i - x_j||^2), x [n, d].

  Lower is more uniform; for unit vectors it lies in [-4t, 0].
  """
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  if n < 2:
    raise ValueError("uniformity needs at least 2 points")
  sq = (x * x).sum(axis=1)
  # log-sum-exp over all off-diagonal pairs, accumulated block by block.
  running_max, running_sum = -np.inf, 0.0
  for lo, hi in _blocks(n):
    d2 = np.maximum(sq[lo:hi, None] + sq[None, :] - 2.0 * x[lo:hi] @ x.T, 0.0)
    logits = -t * d2
    logits[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # leave out i == j
    block_max = logits.max()
    new_max = max(running_max, block_max)
    running_sum = running_sum * math.exp(running_max - new_max) + np.exp(logits - new_max).sum()
    running_max = new_max
  return float(running_max + math.log(running_sum) - math.log(n * (n - 1)))


def ajne_statistic(x: np.ndarray) -> float:
  """Ajne's uniformity statistic on the sphere S^{d-1}, as extended by Prentice (1978).

  A_n = n/4 - 1/(n pi) * sum_{i<j} psi_ij, with psi_ij = arccos<x_i, x_j> the angle between
  unit vectors. Under uniformity E[psi] = pi/2, so E[A_n] = 1/4 for any n and d; A_n grows
  (up to n/4) as the points concentrate, and lower means more uniform, as in CLOOB's analysis.
  Rows of x [n, d] are L2-normalised here.
  """
  x = np.asarray(x, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  n = x.shape[0]
  total = 0.0
  for lo, hi in _blocks(n):
    angles = np.arccos(np.clip(x[lo:hi] @ x.T, -1.0, 1.0))
    upper = np.arange(n)[None, :] > np.arange(lo, hi)[:, None]  # pairs i < j
    total += angles[upper].sum()
  return float(n / 4 - total / (n * math.pi))


def rayleigh_statistic(x: np.ndarray) -> float:
  """Rayleigh's uniformity statistic n * d * ||mean of the unit rows||^2 for x [n, d].

  Asymptotically chi-squared with d degrees of freedom (mean d) for uniform points; larger
  means a stronger common direction. Blind to antipodally symmetric clustering, which Ajne's
  statistic sees.
  """
  x = np.asarray(x, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  n, d = x.shape
  mean = x.mean(axis=0)
  return float(n * d * (mean @ mean))
