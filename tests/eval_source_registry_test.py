"""The eval-source registry: a toy layout registered from the test, detected and run end to
end by a zero-shot evaluator on a tiny model; the detection order; the name/template policy."""

import math
import os
import sys

import numpy as np
import pytest

from cloob_jax import evaluators
from cloob_jax import paths
from cloob_jax.evaluators import prompts
from cloob_jax.evaluators import sources
from cloob_jax.evaluators.sources import names
from cloob_jax.evaluators.sources import registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluators_test import tiny  # noqa: E402,F401  (the ViT-tiny module and variables)

TOY = "npz_toy"
CLASSES = ("red_thing", "green_thing", "blue_thing")


def _npz_files(path):
  where = paths.path(path)
  return [e.name for e in where.iterdir() if e.name.endswith(".npz")] if where.is_dir() else []


def _detect_npz(path, split=None):
  """A folder holding exactly one .npz."""
  del split
  return len(_npz_files(path)) == 1


def _open_npz(data, image_size, name):
  """images uint8 [n, H, W, 3], labels int [n] and classnames [k] from the folder's .npz."""
  del image_size  # resized when batched
  with np.load(os.path.join(data["path"], _npz_files(data["path"])[0])) as f:
    images, labels, own = f["images"], f["labels"], [str(c) for c in f["classnames"]]
  source = sources.ArrayClassification(images, labels, own)
  source.classnames, source.templates = names.names_and_templates(
      data, names.Carried(own), len(own), registry.where(name, data))
  return source


@pytest.fixture
def toy_layout():
  registry.register(TOY, detect=_detect_npz)(_open_npz)
  try:
    yield TOY
  finally:
    registry.unregister(TOY)


def _toy_folder(root, per_class=4, size=32):
  """Plain colours (a random model's predictions vary over them), `per_class` per class."""
  root.mkdir()
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(len(CLASSES)), per_class)
  colours = rng.integers(0, 256, (len(labels), 1, 1, 3), dtype=np.uint8)
  images = np.broadcast_to(colours, (len(labels), size, size, 3)).copy()
  np.savez(root / "toy.npz", images=images, labels=labels, classnames=np.array(CLASSES))
  return str(root), labels


def test_a_registered_layout_is_detected_and_evaluated_end_to_end(toy_layout, tiny, tmp_path):
  path, labels = _toy_folder(tmp_path / "toy")
  assert sources.detect_source(path) == toy_layout  # before 'folder', the fallback
  module, variables = tiny
  embedder = evaluators.Embedder(module, batch_size=16, progress=False)
  built = evaluators.build_all(
      {"toy": dict(type="zeroshot_classification", log_steps=1, data=dict(path=path))}, embedder)
  evaluator = built["toy"]
  assert evaluator.source().classnames == ("red thing", "green thing", "blue thing")  # humanised
  assert evaluator.source().templates == prompts.DEFAULT
  result = dict(evaluator.run(variables))
  assert set(result) == {"toy/top1", "toy/mean_per_class_recall", "toy/class_cosine"}  # 3 < 5
  assert math.isfinite(result["toy/top1"]) and 0.0 <= result["toy/top1"] <= 1.0
  np.testing.assert_array_equal(evaluator.predictions["labels"], labels)
  # The registry's shared steps apply to the new layout: the evenly spread subset.
  subset = sources.classification_source(dict(path=path, num_examples=6), 32, "toy")
  assert len(subset) == 6 and sorted({subset.get(i)[1] for i in range(6)}) == [0, 1, 2]


def test_registration_is_refused_twice_and_undone_by_unregister(tmp_path):
  path, _ = _toy_folder(tmp_path / "toy")
  registry.register(TOY, detect=_detect_npz)(_open_npz)
  try:
    with pytest.raises(ValueError, match="already registered"):
      registry.register(TOY)(_open_npz)
    with pytest.raises(ValueError, match="task="):
      registry.register("other", task="segmentation")
    assert sources.classification_source(dict(source=TOY, path=path), 32).classnames[0] == (
        "red thing")
  finally:
    registry.unregister(TOY)
  assert sources.detect_source(path) == "folder"  # the fallback again
  with pytest.raises(ValueError, match="unknown classification source 'npz_toy'"):
    sources.classification_source(dict(source=TOY, path=path), 32)
  with pytest.raises(KeyError):
    registry.unregister(TOY)


def test_detection_order_is_the_documented_one(tmp_path):
  detectors = sorted((layout for layout in registry.layouts() if layout.detect),
                     key=lambda layout: layout.order)
  assert [layout.name for layout in detectors] == ["tfds", "records", "clip_benchmark", "folder"]
  # An earlier order wins over every built-in one.
  registry.register("everything", detect=lambda path, split: True, order=0)(_open_npz)
  try:
    assert sources.detect_source(str(tmp_path)) == "everything"
  finally:
    registry.unregister("everything")
  assert sources.detect_source(str(tmp_path)) == "folder"
  assert sources.detect_source("tfds:mnist") == sources.detect_source("mnist") == "tfds"


def test_names_and_templates_order_of_precedence(tmp_path):
  own = names.Carried(("Polar_bear", "FR"))
  assert names.names_and_templates({}, own, 2, "t") == (("Polar bear", "FR"), prompts.DEFAULT)
  assert names.names_and_templates({}, names.Carried(("FR", "JP")), 2, "t")[0] == (
      "France", "Japan")
  assert names.names_and_templates({}, names.Carried(("a_b", "c"), as_written=True), 2,
                                   "t")[0] == ("a_b", "c")
  mine = dict(classnames=["x", "y"], default_classnames=["p", "q"])
  assert names.names_and_templates(mine, own, 2, "t")[0] == ("x", "y")  # the config's first
  numbers = names.Carried(("0", "1"), templates=("{} here",))
  assert names.names_and_templates(dict(default_classnames=["p", "q"]), numbers, 2, "t") == (
      ("p", "q"), ("{} here",))  # unreadable own names give way to the default list
  assert names.names_and_templates({}, numbers, 2, "t")[0] == ("0", "1")  # with a warning
  fixed = names.Carried(("red", "blue"), ("a {}.",), fixed=True)
  assert names.names_and_templates(dict(mine, templates="gtsrb"), fixed, 2, "t") == (
      ("red", "blue"), prompts.SETS["gtsrb"])
  assert names.names_and_templates(dict(default_templates="cars"), own, 2, "t")[1] == (
      prompts.SETS["cars"])
  with pytest.raises(ValueError, match="carries no class names"):
    names.names_and_templates({}, names.Carried(), 2, "t")
  with pytest.raises(ValueError, match="t: 2 class names for 3 classes"):
    names.names_and_templates({}, own, 3, "t")
