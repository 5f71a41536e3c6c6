"""Batches of preprocessed eval images: decoded and resized by a thread pool, in order.

Images are decoded on the host (robustly, as the training records are), resized bicubically on
the short side and centre-cropped to the model's size (`transforms.resize_center_crop`), and
batched as uint8; CLIP normalisation happens on the device (`Embedder`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Iterator

import numpy as np

from cloob_jax.data import transforms


def image_batches(get, count: int, image_size: int, batch_size: int,
                  num_threads: int | None = None,
                  targets: list | None = None) -> Iterator[np.ndarray]:
  """uint8 [b, S, S, 3] batches of `get(i)` for i < count, decoded and resized by threads.

  `get(i)` returns (image, *targets) or an image; with a `targets` list, each example's
  targets (e.g. its label) are appended to it in order as batches are produced.
  """
  num_threads = num_threads or min(16, (os.cpu_count() or 1) + 2)

  def fetch(i):
    out = get(i)
    image, *target = out if isinstance(out, tuple) else (out,)
    return transforms.resize_center_crop(image, image_size), target

  window = 2 * batch_size  # images in flight: the next batch decodes while this one embeds
  pending: collections.deque = collections.deque()
  batch: list[np.ndarray] = []
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    next_index = 0
    while next_index < count or pending:
      while next_index < count and len(pending) < window:
        pending.append(pool.submit(fetch, next_index))
        next_index += 1
      image, target = pending.popleft().result()
      batch.append(image)
      if targets is not None:
        targets.append(target[0] if len(target) == 1 else tuple(target))
      if len(batch) == batch_size:
        yield np.stack(batch)
        batch = []
  if batch:
    yield np.stack(batch)
