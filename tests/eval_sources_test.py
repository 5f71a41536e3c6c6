"""Evaluation data sources, on tiny generated datasets in each layout."""

import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from cloob_jax.data import records
from cloob_jax.data import synthetic
from cloob_jax.data import transforms
from cloob_jax.evaluators import classnames
from cloob_jax.evaluators import prompts
from cloob_jax.evaluators import sources


def _image(seed, size=(40, 30), mode="RGB"):
  """A random image as a PIL image of `size` (w, h)."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  return Image.fromarray(pixels).convert(mode)


def _encode(img, fmt):
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


def _collect(source, image_size=16, batch_size=4):
  targets = []
  batches = list(sources.image_batches(source.get, len(source), image_size, batch_size,
                                       num_threads=3, targets=targets))
  return np.concatenate(batches), targets, batches


# ----------------------------------------------------------------------------
# Folder of class sub-folders.


def _make_folder(root, classes, per_class=2, ext="png"):
  for c, name in enumerate(classes):
    os.makedirs(root / name / "nested", exist_ok=True)
    for i in range(per_class):
      where = root / name / ("nested" if i % 2 else "") / f"img{i}.{ext}"
      _image(10 * c + i, mode="RGBA" if i == 1 else "RGB").save(where)
  return root


def test_folder_layout_labels_names_and_preprocessing(tmp_path):
  root = _make_folder(tmp_path / "pets", ["cat_face", "Dog", "PolarBear"], per_class=3)
  (root / "Dog" / "notes.txt").write_text("not an image")
  (tmp_path / "t.txt").write_text("a photo of a {c}.\nan image of a {}.\n\n")
  source = sources.classification_source(
      dict(source="folder", path=str(root), templates=str(tmp_path / "t.txt")), 16)
  assert source.classnames == ("Dog", "Polar Bear", "cat face")  # sorted folder names
  assert source.templates == ("a photo of a {}.", "an image of a {}.")
  images, labels, batches = _collect(source)
  assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert [b.shape[0] for b in batches] == [4, 4, 1]
  assert images.shape == (9, 16, 16, 3) and images.dtype == np.uint8
  # Bicubic short-side resize + centre crop of the decoded file.
  first = np.asarray(Image.open(source.files[0]).convert("RGB"))
  np.testing.assert_array_equal(images[0], transforms.resize_center_crop(first, 16))


def test_folder_numeric_classes_sort_numerically_and_take_default_names(tmp_path):
  names = [str(i) for i in range(12)]  # '10' sorts before '2' as text
  root = _make_folder(tmp_path / "v2", names, per_class=1, ext="jpg")
  source = sources.classification_source(
      dict(path=str(root), default_classnames=str(_names_file(tmp_path, 12))), 16)
  assert source.folder_names == tuple(names)
  assert source.classnames == tuple(f"class {i}" for i in range(12))
  _, labels, _ = _collect(source)
  assert labels == list(range(12))
  # A built-in list by name; a mismatched count is refused.
  gtsrb = _make_folder(tmp_path / "gtsrb", [f"{i:05d}" for i in range(43)], per_class=1)
  assert sources.classification_source(
      dict(path=str(gtsrb), default_classnames="gtsrb"), 16).classnames == classnames.GTSRB
  with pytest.raises(ValueError, match="102 class names for 12 classes"):
    sources.classification_source(dict(path=str(root), default_classnames="flowers102"), 16)


def _names_file(tmp_path, n):
  path = tmp_path / "names.txt"
  path.write_text("".join(f"class {i}\n" for i in range(n)))
  return path


def test_user_class_names_win_and_country_codes_become_names(tmp_path):
  root = _make_folder(tmp_path / "c211", ["AD", "FR", "JP"], per_class=1)
  source = sources.classification_source(dict(path=str(root)), 16)
  assert source.classnames == ("Andorra", "France", "Japan")
  (tmp_path / "mine.txt").write_text("x\ny\nz\n")
  source = sources.classification_source(
      dict(path=str(root), classnames=str(tmp_path / "mine.txt")), 16)
  assert source.classnames == ("x", "y", "z")


def test_folder_subset_is_spread_over_classes(tmp_path):
  root = _make_folder(tmp_path / "f", ["a", "b", "c", "d"], per_class=4)
  source = sources.classification_source(dict(path=str(root), num_examples=4), 16)
  _, labels, _ = _collect(source)
  assert len(source) == 4 and sorted(set(labels)) == [0, 1, 2, 3]


def test_folder_of_videos_explains_what_to_do(tmp_path):
  (tmp_path / "ucf" / "Archery").mkdir(parents=True)
  (tmp_path / "ucf" / "Archery" / "v_Archery_g01_c01.avi").write_bytes(b"\x00" * 10)
  with pytest.raises(ValueError, match="middle frame"):
    sources.classification_source(dict(path=str(tmp_path / "ucf")), 16)


# ----------------------------------------------------------------------------
# CLIP_benchmark webdataset tars.


def _make_clip_benchmark(root, num_shards=2, per_shard=3, num_classes=3, split="test"):
  shard_dir = root / split
  shard_dir.mkdir(parents=True)
  labels = []
  fmts = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
  for s in range(num_shards):
    with tarfile.open(shard_dir / f"{s}.tar", "w") as tar:
      for i in range(per_shard):
        key = f"s{s:04d}{i:04d}"
        label = (s * per_shard + i) % num_classes
        ext, fmt = fmts[i % 3]
        for name, data in ((f"{key}.{ext}", _encode(_image(s * 10 + i), fmt)),
                           (f"{key}.cls", f"{label}\n".encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
        labels.append(label)
  (root / "classnames.txt").write_text("McIntosh_apple\nbanana split\ncherry\n")
  (root / "zeroshot_classification_templates.txt").write_text(
      "a photo of a {c}.\nsome {c} on a table.\n")
  return labels


def test_clip_benchmark_layout(tmp_path):
  expected = _make_clip_benchmark(tmp_path / "wds_fruit")
  assert sources.detect_source(str(tmp_path / "wds_fruit"), "test") == "clip_benchmark"
  source = sources.classification_source(dict(path=str(tmp_path / "wds_fruit")), 16)
  assert source.classnames == ("McIntosh_apple", "banana split", "cherry")  # as written
  assert source.templates == ("a photo of a {}.", "some {} on a table.")
  images, labels, _ = _collect(source)
  assert labels == expected and images.shape == (6, 16, 16, 3)
  # The PNG of the first shard decodes to exactly the pixels that were written.
  np.testing.assert_array_equal(images[1], transforms.resize_center_crop(_image(1), 16))
  # The user's prompts override the dataset's.
  source = sources.classification_source(
      dict(path=str(tmp_path / "wds_fruit"), templates="gtsrb"), 16)
  assert source.templates == prompts.SETS["gtsrb"]


# ----------------------------------------------------------------------------
# Image-caption ArrayRecord shards (retrieval).


def test_records_retrieval_groups_captions_by_key(tmp_path):
  directory = tmp_path / "coco"
  directory.mkdir()
  writer = records.ShardWriter(str(directory / "shard-00000.array_record"))
  items = [("a", "a red car"), ("a", "a car that is red"), ("b", "a dog"), ("c", "two cats")]
  for key, caption in items:
    writer.write(_encode(_image(ord(key)), "PNG"), caption, key)
  writer.close()
  records.write_manifest(str(directory), {
      "format": records.FORMAT, "complete": True, "num_records": 4,
      "shards": [{"file": "shard-00000.array_record", "num_records": 4}]})
  assert sources.detect_source(str(directory)) == "records"
  source = sources.retrieval_source(dict(path=str(directory)), 16)
  assert source.captions == [["a red car", "a car that is red"], ["a dog"], ["two cats"]]
  images = np.concatenate(list(sources.image_batches(source.get, len(source), 16, 2)))
  np.testing.assert_array_equal(images[2], transforms.resize_center_crop(_image(ord("c")), 16))


# ----------------------------------------------------------------------------
# The synthetic world.


def test_synthetic_sources_match_the_world():
  source = sources.classification_source(
      dict(source="synthetic", task="shape", num_examples=16, seed=3), 32)
  images, labels = synthetic.task_examples("shape", 16, image_size=32, seed=3)
  got = source.arrays(32)
  np.testing.assert_array_equal(got[0], images)
  np.testing.assert_array_equal(got[1], labels)
  assert source.classnames == synthetic.SHAPES
  assert source.templates == synthetic.zeroshot_tasks()["shape"].templates
  retrieval = sources.retrieval_source(
      dict(source="synthetic_retrieval", num_examples=4, captions_per_image=2), 32)
  images, captions = synthetic.retrieval_examples(4, image_size=32, captions_per_image=2)
  np.testing.assert_array_equal(retrieval.arrays(32), images)
  assert retrieval.captions == captions


def test_unlocated_data_is_unavailable_with_its_hint(tmp_path):
  with pytest.raises(sources.DataUnavailable, match="add :imagenet="):
    sources.check(dict(path=None, hint="not located: add :imagenet=PATH"))
  with pytest.raises(FileNotFoundError):
    sources.classification_source(dict(path=str(tmp_path / "nope") + "/"), 16)


# ----------------------------------------------------------------------------
# TFDS (optional: needs tensorflow-datasets and tensorflow).


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tensorflow")

  class CloobTinyShapes(tfds.core.GeneratorBasedBuilder):
    """Six generated images of two classes."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=["red_square", "blue_circle"])}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        yield i, {"image": np.asarray(_image(100 + i, size=(24 + i, 20))), "label": i % 2}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  CloobTinyShapes(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_data_source(tiny_tfds):
  source = sources.classification_source(
      dict(path="tfds:cloob_tiny_shapes", data_dir=tiny_tfds, tfds_split="test"), 16)
  assert source.classnames == ("red square", "blue circle")
  assert source.templates == prompts.DEFAULT
  images, labels, _ = _collect(source)
  assert images.shape == (6, 16, 16, 3)
  # Every generated image comes back with its label (TFDS may store them in another order).
  expected = {transforms.resize_center_crop(np.asarray(_image(100 + i, size=(24 + i, 20))),
                                            16).tobytes(): i % 2 for i in range(6)}
  assert {im.tobytes(): label for im, label in zip(images, labels)} == expected
  with pytest.raises(ValueError, match="cannot be read"):
    sources.classification_source(dict(source="tfds", path="cloob_tiny_shapes",
                                       data_dir=tiny_tfds, split="nosuchsplit"), 16)
