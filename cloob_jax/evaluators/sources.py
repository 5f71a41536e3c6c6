"""Evaluation data: labelled images for classification, captioned images for retrieval.

A data config (a dict or ConfigDict, the `data=` of an evaluator) names where the data is:

  source='synthetic', task='colour', num_examples=512, seed=0        # synthetic.task_examples
  source='synthetic_retrieval', num_examples=256, captions_per_image=5  # retrieval_examples
  source='folder', path=DIR                 # DIR/<class>/**/<image>; class = folder name
  source='clip_benchmark', path=DIR, split='test'   # webdataset tars: KEY.jpg|png|webp + KEY.cls
  source='tfds', path=NAME, split='test', data_dir=None   # tfds.data_source (ArrayRecord);
                                            # tfds_split=..., when TFDS names the split otherwise
  source='records', path=DIR                # records.ImageTextSource shards, for retrieval
  path=... without source                   # detected: see `detect_source`

Common keys: `num_examples` (an evenly spread subset, for quick evals), `classnames` and
`templates` (a list, a built-in name or a file path), `default_classnames` and
`default_templates` (used when neither the user nor the dataset gives any; see `_classnames`).
`path=None` with a `hint` marks a dataset the user has not located: `check` raises
`DataUnavailable(hint)` and the eval binary skips it.

Images are decoded on the host (robustly, as the training records are), resized bicubically
on the short side and centre-cropped to the model's size (`transforms.resize_center_crop`) in
a thread pool, and batched as uint8; CLIP normalisation happens on the device (`Embedder`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import re
import tarfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from cloob_jax import config_lib
from cloob_jax import paths
from cloob_jax.data import records
from cloob_jax.data import synthetic
from cloob_jax.data import transforms
from cloob_jax.evaluators import classnames as classnames_lib
from cloob_jax.evaluators import prompts

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


class DataUnavailable(Exception):
  """A dataset the config names but that is not located; the eval binary skips it."""


# ----------------------------------------------------------------------------
# Sources: random access to (image, target).


class ClassificationSource:
  """Labelled images. `get(i)` -> (image: uint8 [H, W, 3] or PIL image, label: int).

  Attributes:
    classnames: one readable name per class, in label order.
    templates: prompt templates with one '{}'.
  """
  classnames: tuple[str, ...] = ()
  templates: tuple[str, ...] = ()

  def __len__(self) -> int:
    raise NotImplementedError

  def get(self, index: int) -> tuple[Any, int]:
    raise NotImplementedError

  def arrays(self, image_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 [n, S, S, 3], int32 [n]) when already in memory at size S; else None."""
    del image_size
    return None


class RetrievalSource:
  """Captioned images. `get(i)` -> image; `captions[i]` -> list of str (at least one)."""
  captions: list[list[str]] = []

  def __len__(self) -> int:
    return len(self.captions)

  def get(self, index: int):
    raise NotImplementedError

  def arrays(self, image_size: int) -> np.ndarray | None:
    del image_size
    return None


class ArrayClassification(ClassificationSource):
  """In-memory images uint8 [n, H, W, 3] and labels int [n]."""

  def __init__(self, images, labels, classnames: Sequence[str], templates=None):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels, np.int32)
    if self.images.shape[0] != self.labels.shape[0]:
      raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
    self.classnames = tuple(classnames)
    self.templates = prompts.resolve(templates)
    _check_labels(self.labels, len(self.classnames), "arrays")

  def __len__(self) -> int:
    return self.images.shape[0]

  def get(self, index):
    return self.images[index], int(self.labels[index])

  def arrays(self, image_size):
    if self.images.shape[1:] == (image_size, image_size, 3) and self.images.dtype == np.uint8:
      return self.images, self.labels
    return None


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
    if self.images.shape[1:] == (image_size, image_size, 3) and self.images.dtype == np.uint8:
      return self.images
    return None


def _check_labels(labels: np.ndarray, num_classes: int, where: str):
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{where}: labels span [{labels.min()}, {labels.max()}] but there are "
                     f"{num_classes} class names")


def _read_image(path: str) -> np.ndarray:
  data = paths.read_bytes(path)
  try:
    return records.decode_image(data)
  except records.BadRecord as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def _natural_key(name: str):
  """'shard-10' after 'shard-9': digit runs compare as numbers."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class FolderClassification(ClassificationSource):
  """DIR/<class>/**/<image>: one sub-folder per class, images anywhere below it.

  Classes are the sub-folders in sorted order (numerically when every name is a number, as in
  ImageNet V2's 0..999 or GTSRB's 00000..00042). `folder_names` keeps the raw names.
  """

  def __init__(self, root: str):
    self.root = root
    if not paths.path(root, "eval data path").is_dir():
      raise FileNotFoundError(f"no folder {root!r}")
    names = [e.name for e in paths.path(root).iterdir()
             if e.is_dir() and not e.name.startswith(".")]
    if not names:
      raise ValueError(f"{root}: no class sub-folders")
    numeric = all(n.isdigit() for n in names)
    self.folder_names = tuple(sorted(names, key=int if numeric else None))
    self.files: list[str] = []
    labels = []
    videos = 0
    for label, name in enumerate(self.folder_names):
      for f in _files_below(paths.join(root, name)):
        ext = os.path.splitext(f)[1].lower()
        if ext in IMAGE_EXTENSIONS:
          self.files.append(f)
          labels.append(label)
        elif ext in VIDEO_EXTENSIONS:
          videos += 1
    if not self.files:
      if videos:
        raise ValueError(f"{root} holds videos, not images: extract one frame per video (for "
                         "UCF101 the middle frame, e.g. with ffmpeg) into the same class folders")
      raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    self.labels = np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.files)

  def get(self, index):
    return _read_image(self.files[index]), int(self.labels[index])


def _files_below(directory: str) -> Iterator[str]:
  """Every file below `directory` (local or gs://): a folder's files in name order, then each
  sub-folder's in name order, as os.walk top-down with sorted names."""
  entries = sorted(paths.path(directory).iterdir(), key=lambda e: e.name)
  folders = [e for e in entries if e.is_dir()]
  yield from (paths.join(directory, e.name) for e in entries if e not in folders)
  for folder in folders:
    yield from _files_below(paths.join(directory, folder.name))


@dataclasses.dataclass(frozen=True)
class _TarMember:
  path: str
  offset: int
  size: int


class ClipBenchmarkClassification(ClassificationSource):
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
      names = sorted((e.name for e in paths.path(shard_dir).iterdir()), key=_natural_key)
      shards = [paths.join(shard_dir, f) for f in names if f.endswith(".tar")]
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
          directory, base = os.path.split(m.name)
          stem, _, ext = base.partition(".")
          key = os.path.join(directory, stem)
          ext = "." + ext.lower()
          if ext in IMAGE_EXTENSIONS:
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


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("TFDS datasets need `pip install tensorflow-datasets tensorflow-cpu` "
                      "(cloob_jax's 'tfds' extra)") from e
  return tfds


class TfdsClassification(ClassificationSource):
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
    names = list(getattr(feature, "names", None) or [])
    self.dataset_classnames = names or None

  def __len__(self):
    return len(self._source)

  def get(self, index):
    example = self._source[int(index)]
    image = np.asarray(example[self.image_key])
    if image.ndim == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return image, int(example[self.label_key])


class SyntheticClassification(ArrayClassification):
  """A zero-shot task of the synthetic world (`synthetic.task_examples`), rendered at size S."""

  def __init__(self, task: str, num_examples: int, image_size: int, seed: int = 0):
    spec = synthetic.zeroshot_tasks()[task]
    images, labels = synthetic.task_examples(task, num_examples, image_size=image_size, seed=seed)
    super().__init__(images, labels, spec.classnames, spec.templates)


class RecordsRetrieval(RetrievalSource):
  """An image-caption ArrayRecord directory (`records.ImageTextSource`).

  Records that share a key (one image written once per caption) become one image with all
  their captions; otherwise every record is one image with one caption.
  """

  def __init__(self, directory: str, max_images: int | None = None):
    self._source = records.ImageTextSource(directory)
    first: dict[str, int] = {}
    self._index: list[int] = []
    self.captions = []
    chunk = 1024  # records read per call: one seek per record is slow on big directories
    for start in range(0, len(self._source), chunk):
      indices = list(range(start, min(start + chunk, len(self._source))))
      for i, r in zip(indices, self._source.__getitems__(indices)):
        if r["key"] in first:
          self.captions[first[r["key"]]].append(r["caption"])
          continue
        if max_images is not None and len(self._index) >= max_images:
          continue
        first[r["key"]] = len(self._index)
        self._index.append(i)
        self.captions.append([r["caption"]])

  def get(self, index):
    data = self._source[self._index[index]]["image_bytes"]
    try:
      return records.decode_image(data)
    except records.BadRecord as e:
      raise ValueError(f"cannot read image {index} of {self._source}: {e}") from e


# ----------------------------------------------------------------------------
# From config to source.


def detect_source(path: str, split: str | None = None) -> str:
  """The layout at `path`: 'records', 'clip_benchmark', 'folder', or else 'tfds' (a name)."""
  if path.startswith("tfds:"):
    return "tfds"
  where = paths.path(path, "eval data path")
  if not where.exists():
    if paths.is_remote(path) or path.startswith((".", os.sep)) or path.endswith(os.sep):
      raise FileNotFoundError(f"no dataset at {path!r}")
    return "tfds"
  if not where.is_dir():
    if path.endswith(".tar"):
      return "clip_benchmark"
    raise ValueError(f"{path} is a file; expected a dataset folder, a .tar shard or a TFDS name")
  if paths.exists(records.manifest_path(path)):
    return "records"
  # Shards in the folder itself or in a split folder below it (CLIP_benchmark's 'test/').
  candidates = [path] + [paths.join(path, e.name) for e in where.iterdir() if e.is_dir()]
  if split:
    candidates.insert(0, paths.join(path, split))
  for directory in candidates:
    folder = paths.path(directory)
    if folder.is_dir() and any(e.name.endswith(".tar") for e in folder.iterdir()):
      return "clip_benchmark"
  return "folder"


def check(data) -> None:
  """Raises DataUnavailable when the data config has not been located (cheap: no reading)."""
  if isinstance(data, (ClassificationSource, RetrievalSource)):
    return
  data = config_lib.as_dict(data)
  source = data.get("source")
  if source in ("synthetic", "synthetic_retrieval", "arrays"):
    return
  if not data.get("path"):
    raise DataUnavailable(data.get("hint") or "no path given")


def _subset(n: int, num_examples: int | None) -> np.ndarray:
  """Evenly spread indices: the first k of a class-sorted folder would be one class only."""
  if num_examples is None or num_examples >= n:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, num_examples).round().astype(np.int64))


def _named_list(spec, what: str) -> tuple[str, ...]:
  """A list, a built-in list name, or a file with one entry per line."""
  if isinstance(spec, str):
    if paths.check(spec, what) and paths.exists(spec):
      return tuple(prompts.read_lines(spec))
    try:
      return classnames_lib.builtin(spec)
    except ValueError as e:
      raise ValueError(f"{what} {spec!r}: neither a file nor a built-in list ({e})") from e
  return tuple(str(s) for s in spec)


def _classnames(data: Mapping[str, Any], carried: Sequence[str] | None, num_classes: int,
                where: str, humanize: bool = True) -> tuple[str, ...]:
  """Class names, first found of: the user's `classnames` (list, built-in name or file); the
  dataset's own names when readable (country codes become country names; folder and label
  names are humanised unless written for prompts, as CLIP_benchmark's classnames.txt is);
  `default_classnames`; the dataset's names even if unreadable (with a warning)."""
  if data.get("classnames") is not None:
    names = _named_list(data["classnames"], "classnames")
  elif carried and classnames_lib.readable(carried):
    names = tuple(classnames_lib.from_codes(carried) or
                  [classnames_lib.humanize(n) if humanize else n for n in carried])
  elif data.get("default_classnames") is not None:
    names = _named_list(data["default_classnames"], "default_classnames")
  elif carried:
    logging.warning("%s: class names %s... are not words; name a file with classnames=FILE",
                    where, list(carried[:3]))
    names = tuple(carried)
  else:
    raise ValueError(f"{where}: the dataset carries no class names; pass classnames=FILE")
  if len(names) != num_classes:
    raise ValueError(f"{where}: {len(names)} class names for {num_classes} classes")
  return names


def _templates(data: Mapping[str, Any], carried: Sequence[str] | None) -> tuple[str, ...]:
  """The user's `templates`, else the dataset's, else `default_templates`, else the default set."""
  if data.get("templates") is not None:
    return prompts.resolve(data["templates"])
  if carried:
    return prompts.resolve(list(carried))
  return prompts.resolve(data.get("default_templates"))


class _Subset(ClassificationSource):
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


def classification_source(data, image_size: int, name: str = "data") -> ClassificationSource:
  """A ClassificationSource from a data config (see the module docstring)."""
  if isinstance(data, ClassificationSource):
    return data
  check(data)
  data = config_lib.as_dict(data)
  source = data.get("source") or detect_source(data["path"], data.get("split"))
  where = f"{name} ({source}: {data.get('path') or data.get('task')})"
  if source == "synthetic":
    out = SyntheticClassification(data.get("task", name), int(data.get("num_examples", 512)),
                                  image_size, int(data.get("seed", 0)))
    if data.get("templates") is not None:
      out.templates = prompts.resolve(data["templates"])
    return out
  if source == "arrays":
    base = ArrayClassification(data["images"], data["labels"], data["classnames"],
                               data.get("templates"))
  elif source == "folder":
    path = data["path"]
    if data.get("split") and paths.path(paths.join(path, data["split"])).is_dir():
      path = paths.join(path, data["split"])
    base = FolderClassification(path)
    base.classnames = _classnames(data, base.folder_names, len(base.folder_names), where)
    base.templates = _templates(data, None)
  elif source == "clip_benchmark":
    base = ClipBenchmarkClassification(data["path"], data.get("split", "test"))
    carried = base.dataset_classnames
    count = len(carried) if carried else int(base.labels.max()) + 1
    base.classnames = _classnames(data, carried, count, where, humanize=False)
    base.templates = _templates(data, base.dataset_templates)
  elif source == "tfds":
    tfds_name = data["path"][len("tfds:"):] if data["path"].startswith("tfds:") else data["path"]
    split = data.get("tfds_split") or data.get("split") or "test"
    base = TfdsClassification(tfds_name, split, data.get("data_dir"),
                              data.get("image_key", "image"), data.get("label_key", "label"))
    base.classnames = _classnames(data, base.dataset_classnames, base.num_classes, where)
    base.templates = _templates(data, None)
  else:
    raise ValueError(f"{where}: unknown classification source {source!r}")
  if hasattr(base, "labels") and not isinstance(base, ArrayClassification):
    _check_labels(base.labels, len(base.classnames), where)
  indices = _subset(len(base), data.get("num_examples"))
  return base if len(indices) == len(base) else _Subset(base, indices)


def retrieval_source(data, image_size: int, name: str = "data") -> RetrievalSource:
  """A RetrievalSource from a data config: 'synthetic_retrieval', 'records' or 'arrays'."""
  if isinstance(data, RetrievalSource):
    return data
  check(data)
  data = config_lib.as_dict(data)
  source = data.get("source") or detect_source(data["path"])
  if source == "synthetic_retrieval":
    images, captions = synthetic.retrieval_examples(
        int(data.get("num_examples", 256)), image_size=image_size, seed=int(data.get("seed", 0)),
        captions_per_image=int(data.get("captions_per_image", 5)))
    return ArrayRetrieval(images, captions)
  if source == "arrays":
    return ArrayRetrieval(data["images"], data["captions"])
  if source == "records":
    return RecordsRetrieval(data["path"], data.get("num_examples"))
  raise ValueError(f"{name}: unknown retrieval source {source!r} "
                   "(synthetic_retrieval, records or arrays)")


# ----------------------------------------------------------------------------
# Batches of preprocessed images.


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
