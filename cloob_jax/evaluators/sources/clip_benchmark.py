"""Layout 'clip_benchmark': CLIP_benchmark's webdataset tars (its `wds_*` datasets).

Reads tar shards of KEY.{jpg,png,webp,...} + KEY.cls (the label, an int), in DIR, in DIR/SPLIT
(default 'test'), or one .tar file. `classnames.txt` and
`zeroshot_classification_templates.txt` beside the shards or one folder up (the dataset root)
are the dataset's own names (used as written) and templates.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile

import numpy as np

from cloob_jax import paths
from cloob_jax.data import records
from cloob_jax.evaluators import prompts
from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import names
from cloob_jax.evaluators.sources import registry

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclasses.dataclass(frozen=True)
class _TarMember:
  path: str
  offset: int
  size: int


class ClipBenchmarkClassification(base.ClassificationSource):
  """CLIP_benchmark's webdataset layout: tar shards of KEY.{jpg,png,webp} + KEY.cls (an int).

  `classnames.txt` and `zeroshot_classification_templates.txt` sit beside the shards or one
  folder up (the dataset root, with the shards in a split folder). The shards are indexed once
  (member offsets), then images are read by seeking, so access is random and thread-safe.
  """

  def __init__(self, root: str, split: str | None = "test"):
    if root.endswith(".tar") and paths.path(root, "eval data path").is_file():
      shard_dir, shards = root.rsplit("/", 1)[0] if "/" in root else ".", [root]
    else:
      shard_dir = root
      if split and paths.path(paths.join(root, split)).is_dir():
        shard_dir = paths.join(root, split)
      if not paths.path(shard_dir).is_dir():
        raise FileNotFoundError(f"no folder {shard_dir!r}")
      files = sorted((e.name for e in paths.path(shard_dir).iterdir()), key=base.natural_key)
      shards = [paths.join(shard_dir, f) for f in files if f.endswith(".tar")]
    if not shards:
      raise ValueError(f"{shard_dir}: no .tar shards")
    self.shard_dir = shard_dir
    self.members: list[_TarMember] = []
    labels = []
    for shard in shards:
      images: dict[str, _TarMember] = {}
      classes: dict[str, int] = {}
      order: list[str] = []
      with paths.path(shard).open("rb") as f, tarfile.open(fileobj=f) as tar:
        for m in tar:
          if not m.isfile():
            continue
          # webdataset's convention: the key is everything before the first dot of the basename.
          directory, basename = os.path.split(m.name)
          stem, _, ext = basename.partition(".")
          key = os.path.join(directory, stem)
          ext = "." + ext.lower()
          if ext in base.IMAGE_EXTENSIONS:
            images[key] = _TarMember(shard, m.offset_data, m.size)
            order.append(key)
          elif ext == ".cls":
            classes[key] = int(tar.extractfile(m).read().decode().strip())
      for key in order:
        if key not in classes:
          raise ValueError(f"{shard}: sample {key!r} has an image but no .cls")
        self.members.append(images[key])
        labels.append(classes[key])
    self.labels = np.asarray(labels, np.int32)
    self.dataset_classnames = self._beside(CLASSNAMES_FILE)
    self.dataset_templates = self._beside(TEMPLATES_FILE)

  def _beside(self, filename: str) -> list[str] | None:
    parent = (self.shard_dir.rstrip("/").rsplit("/", 1)[0] if paths.is_remote(self.shard_dir)
              else os.path.dirname(os.path.abspath(self.shard_dir)))
    for directory in (self.shard_dir, parent):
      path = paths.join(directory, filename)
      if paths.exists(path):
        return prompts.read_lines(path)
    return None

  def __len__(self):
    return len(self.members)

  def get(self, index):
    m = self.members[index]
    with paths.path(m.path).open("rb") as f:
      f.seek(m.offset)
      data = f.read(m.size)
    try:
      return records.decode_image(data), int(self.labels[index])
    except records.BadRecord as e:
      raise ValueError(f"cannot read image {index} of {m.path}: {e}") from e


def detect(path: str, split: str | None = None) -> bool:
  """A .tar file, or a folder with .tar shards in it, in its split folder or in a sub-folder
  (CLIP_benchmark's 'test/')."""
  where = paths.path(path, "eval data path")
  if not where.is_dir():
    return path.endswith(".tar") and where.exists()
  candidates = [path] + [paths.join(path, e.name) for e in where.iterdir() if e.is_dir()]
  if split:
    candidates.insert(0, paths.join(path, split))
  for directory in candidates:
    folder = paths.path(directory)
    if folder.is_dir() and any(e.name.endswith(".tar") for e in folder.iterdir()):
      return True
  return False


@registry.register("clip_benchmark", detect=detect, order=30)
def open_clip_benchmark(data: dict, image_size: int,
                        name: str) -> ClipBenchmarkClassification:
  del image_size  # resized when batched
  source = ClipBenchmarkClassification(data["path"], data.get("split", "test"))
  own = source.dataset_classnames
  count = len(own) if own else int(source.labels.max()) + 1
  carried = names.Carried(own, source.dataset_templates, as_written=True)
  source.classnames, source.templates = names.names_and_templates(
      data, carried, count, registry.where(name, data))
  return source
