"""What every eval data layout builds on: the two source ABCs, in-memory sources, helpers.

A ClassificationSource gives random access to labelled images, a RetrievalSource to captioned
images; both say (`arrays`) when their images are already in memory at the model's size, so
the evaluators can skip decoding. `DataUnavailable` marks a dataset the config names but that
the user has not located (the eval binary skips it).
"""

from __future__ import annotations

import abc
import re
from typing import Any, Sequence

import numpy as np

from cloob_jax import paths
from cloob_jax.data import records
from cloob_jax.evaluators import prompts

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm")


class DataUnavailable(Exception):
  """A dataset the config names but that is not located; the eval binary skips it."""


class ClassificationSource(abc.ABC):
  """Labelled images. `get(i)` -> (image: uint8 [H, W, 3] or PIL image, label: int).

  Attributes:
    classnames: one readable name per class, in label order.
    templates: prompt templates with one '{}'.
  """
  classnames: tuple[str, ...] = ()
  templates: tuple[str, ...] = ()

  @abc.abstractmethod
  def __len__(self) -> int:
    """The number of examples."""

  @abc.abstractmethod
  def get(self, index: int) -> tuple[Any, int]:
    """(image, label) of example `index`."""

  def arrays(self, image_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 [n, S, S, 3], int32 [n]) when already in memory at size S; else None."""
    del image_size
    return None


class RetrievalSource(abc.ABC):
  """Captioned images. `get(i)` -> image; `captions[i]` -> list of str (at least one)."""
  captions: list[list[str]] = []

  def __len__(self) -> int:
    return len(self.captions)

  @abc.abstractmethod
  def get(self, index: int):
    """The image of example `index`."""

  def arrays(self, image_size: int) -> np.ndarray | None:
    """uint8 [n, S, S, 3] when already in memory at size S; else None."""
    del image_size
    return None


def _at_size(images: np.ndarray, image_size: int) -> bool:
  return images.shape[1:] == (image_size, image_size, 3) and images.dtype == np.uint8


class ArrayClassification(ClassificationSource):
  """In-memory images uint8 [n, H, W, 3] and labels int [n]."""

  def __init__(self, images, labels, classnames: Sequence[str], templates=None):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels, np.int32)
    if self.images.shape[0] != self.labels.shape[0]:
      raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
    self.classnames = tuple(classnames)
    self.templates = prompts.resolve(templates)
    check_labels(self.labels, len(self.classnames), "arrays")

  def __len__(self) -> int:
    return self.images.shape[0]

  def get(self, index):
    return self.images[index], int(self.labels[index])

  def arrays(self, image_size):
    return (self.images, self.labels) if _at_size(self.images, image_size) else None


class ArrayRetrieval(RetrievalSource):
  """In-memory images uint8 [n, H, W, 3], each with a list of captions."""

  def __init__(self, images, captions: Sequence[Sequence[str]]):
    self.images = np.asarray(images)
    self.captions = [[str(c) for c in caps] for caps in captions]
    if len(self.captions) != self.images.shape[0] or any(not c for c in self.captions):
      raise ValueError("need one non-empty list of captions per image")

  def get(self, index):
    return self.images[index]

  def arrays(self, image_size):
    return self.images if _at_size(self.images, image_size) else None


class Subset(ClassificationSource):
  """The examples `indices` of a ClassificationSource, with its names and templates."""

  def __init__(self, base: ClassificationSource, indices: np.ndarray):
    self.base, self.indices = base, indices
    self.classnames, self.templates = base.classnames, base.templates

  def __len__(self):
    return len(self.indices)

  def get(self, index):
    return self.base.get(int(self.indices[index]))

  def arrays(self, image_size):
    full = self.base.arrays(image_size)
    return None if full is None else (full[0][self.indices], full[1][self.indices])


def subset_indices(n: int, num_examples: int | None) -> np.ndarray:
  """Evenly spread indices: the first k of a class-sorted folder would be one class only."""
  if num_examples is None or num_examples >= n:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, num_examples).round().astype(np.int64))


def check_labels(labels: np.ndarray, num_classes: int, where: str):
  """Raises ValueError when a label is no index into `num_classes` class names."""
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{where}: labels span [{labels.min()}, {labels.max()}] but there are "
                     f"{num_classes} class names")


def read_image(path: str) -> np.ndarray:
  """The decoded image file at `path` (local or gs://), robustly as the training records are."""
  data = paths.read_bytes(path)
  try:
    return records.decode_image(data)
  except records.BadRecord as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def natural_key(name: str):
  """'shard-10' after 'shard-9': digit runs compare as numbers."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
