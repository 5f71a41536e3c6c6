"""Layout 'folder': DIR/<class>/**/<image>, one sub-folder per class (ImageNet-style).

Reads every image file (`base.IMAGE_EXTENSIONS`) anywhere below each class folder; other files
are ignored. Class names come from the folder names (humanised, country codes made names;
see `names.names_and_templates`). With `split=S` and a folder DIR/S, DIR/S is the dataset.
Detected as the fallback: any folder that no other layout recognises.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from cloob_jax import paths
from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import names
from cloob_jax.evaluators.sources import registry


class FolderClassification(base.ClassificationSource):
  """DIR/<class>/**/<image>: one sub-folder per class, images anywhere below it.

  Classes are the sub-folders in sorted order (numerically when every name is a number, as in
  ImageNet V2's 0..999 or GTSRB's 00000..00042). `folder_names` keeps the raw names.
  """

  def __init__(self, root: str):
    self.root = root
    if not paths.path(root, "eval data path").is_dir():
      raise FileNotFoundError(f"no folder {root!r}")
    folders = [e.name for e in paths.path(root).iterdir()
               if e.is_dir() and not e.name.startswith(".")]
    if not folders:
      raise ValueError(f"{root}: no class sub-folders")
    numeric = all(n.isdigit() for n in folders)
    self.folder_names = tuple(sorted(folders, key=int if numeric else None))
    self.files: list[str] = []
    labels = []
    videos = 0
    for label, name in enumerate(self.folder_names):
      for f in _files_below(paths.join(root, name)):
        ext = os.path.splitext(f)[1].lower()
        if ext in base.IMAGE_EXTENSIONS:
          self.files.append(f)
          labels.append(label)
        elif ext in base.VIDEO_EXTENSIONS:
          videos += 1
    if not self.files:
      if videos:
        raise ValueError(f"{root} holds videos, not images: extract one frame per video (for "
                         "UCF101 the middle frame, e.g. with ffmpeg) into the same class folders")
      raise ValueError(f"{root}: no images ({', '.join(base.IMAGE_EXTENSIONS)}) in the class "
                       "folders")
    self.labels = np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.files)

  def get(self, index):
    return base.read_image(self.files[index]), int(self.labels[index])


def _files_below(directory: str) -> Iterator[str]:
  """Every file below `directory` (local or gs://): a folder's files in name order, then each
  sub-folder's in name order, as os.walk top-down with sorted names."""
  entries = sorted(paths.path(directory).iterdir(), key=lambda e: e.name)
  folders = [e for e in entries if e.is_dir()]
  yield from (paths.join(directory, e.name) for e in entries if e not in folders)
  for folder in folders:
    yield from _files_below(paths.join(directory, folder.name))


def detect(path: str, split: str | None = None) -> bool:
  """Any folder (this layout is tried last)."""
  del split
  return paths.path(path, "eval data path").is_dir()


@registry.register("folder", detect=detect, order=90)
def open_folder(data: dict, image_size: int, name: str) -> FolderClassification:
  del image_size  # resized when batched
  path = data["path"]
  if data.get("split") and paths.path(paths.join(path, data["split"])).is_dir():
    path = paths.join(path, data["split"])
  source = FolderClassification(path)
  carried = names.Carried(source.folder_names)
  source.classnames, source.templates = names.names_and_templates(
      data, carried, len(source.folder_names), registry.where(name, data))
  return source
