"""Layout 'tfds': a TFDS dataset prepared with file_format='array_record'.

Reads `tfds.data_source` of `path` ('tfds:NAME' or NAME) under `data_dir`, split `tfds_split`
or else `split` (default 'test'), features `image_key` ('image') and `label_key` ('label');
class names are the label feature's names. Needs tensorflow-datasets (the 'tfds' extra).
"""

from __future__ import annotations

import os

import numpy as np

from cloob_jax import paths
from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import names
from cloob_jax.evaluators.sources import registry

PREFIX = "tfds:"


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("TFDS datasets need `pip install tensorflow-datasets tensorflow-cpu` "
                      "(cloob_jax's 'tfds' extra)") from e
  return tfds


class TfdsClassification(base.ClassificationSource):
  """A TFDS dataset prepared with file_format='array_record', read by `tfds.data_source`."""

  def __init__(self, name: str, split: str = "test", data_dir: str | None = None,
               image_key: str = "image", label_key: str = "label"):
    tfds = _tfds()
    self.name, self.split = name, split
    self.image_key, self.label_key = image_key, label_key
    try:
      builder = tfds.builder(name, data_dir=data_dir)
      self._source = builder.as_data_source(split=split)
    except Exception as e:  # tfds raises many types for a missing or unprepared dataset
      raise ValueError(f"TFDS dataset {name!r} split {split!r} (data_dir={data_dir!r}) cannot be "
                       f"read: {type(e).__name__}: {e}. It must be prepared with "
                       f"file_format='array_record'. (If {name!r} was meant as a path: no such "
                       "file or folder.)") from e
    feature = builder.info.features[label_key]
    self.num_classes = int(feature.num_classes)
    label_names = list(getattr(feature, "names", None) or [])
    self.dataset_classnames = label_names or None

  def __len__(self):
    return len(self._source)

  def get(self, index):
    example = self._source[int(index)]
    image = np.asarray(example[self.image_key])
    if image.ndim == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return image, int(example[self.label_key])


def detect(path: str, split: str | None = None) -> bool:
  """'tfds:NAME', or a name that is no existing path and does not look like one (remote, or
  starting with '.' or '/', or ending with '/')."""
  del split
  if path.startswith(PREFIX):
    return True
  if paths.path(path, "eval data path").exists():
    return False
  return not (paths.is_remote(path) or path.startswith((".", os.sep)) or path.endswith(os.sep))


@registry.register("tfds", detect=detect, order=10)
def open_tfds(data: dict, image_size: int, name: str) -> TfdsClassification:
  del image_size  # resized when batched
  path = data["path"]
  split = data.get("tfds_split") or data.get("split") or "test"
  source = TfdsClassification(path[len(PREFIX):] if path.startswith(PREFIX) else path, split,
                              data.get("data_dir"), data.get("image_key", "image"),
                              data.get("label_key", "label"))
  carried = names.Carried(source.dataset_classnames)
  source.classnames, source.templates = names.names_and_templates(
      data, carried, source.num_classes, registry.where(name, data))
  return source
