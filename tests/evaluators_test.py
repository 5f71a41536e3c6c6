"""Evaluators: metrics on hand-made embeddings, the sharded Embedder, the registry."""

import math

import jax
import ml_collections
import numpy as np
import pytest

from cloob_jax import evaluators
from cloob_jax import models
from cloob_jax.data import tokenizer
from cloob_jax.evaluators import common
from cloob_jax.evaluators import embedding_analysis
from cloob_jax.evaluators import linear_probe
from cloob_jax.evaluators import metrics
from cloob_jax.evaluators import sources
from cloob_jax.models import inputs


def _unit(v):
  v = np.asarray(v, np.float64)
  return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class FakeEmbedder(common.Embedder):
  """Embeds image i (pixel [0, 0, 0] == i) as image_table[i] and a text by text_table[text]."""

  def __init__(self, image_table, text_table, image_size=4):
    self.image_table = np.asarray(image_table, np.float32)
    self.text_table = {k: np.asarray(v, np.float32) for k, v in text_table.items()}
    self.image_size = image_size
    self.batch_size = 3  # odd, so that batching and re-chunking are exercised
    self.progress = False
    self._cache_identity, self._cache = None, {}
    self.text_calls = 0

  def images(self, n=None):
    """uint8 images whose first pixel is their index into image_table."""
    n = len(self.image_table) if n is None else n
    out = np.zeros((n, self.image_size, self.image_size, 3), np.uint8)
    out[:, 0, 0, 0] = np.arange(n)
    return out

  def embed_images(self, variables, images, desc=None):
    return self.image_table[np.asarray(images)[:, 0, 0, 0]]

  def embed_image_batches(self, variables, batches, total=None, desc=None):
    return self.embed_images(variables, np.concatenate(list(batches)))

  def embed_strings(self, variables, texts, desc=None):
    self.text_calls += 1
    return np.stack([self.text_table[t] for t in texts])


# ----------------------------------------------------------------------------
# Zero-shot classification on hand-made embeddings.

# Image scores over 6 classes (embedding = scores, normalised; class c = unit vector e_c) and
# labels. Hand-computed: top-1 hits A C E G I (5/9); top-5 misses only D and H (7/9);
# per-class recall over the present classes 0,1,2,3,5: (1/2 + 1/2 + 2/2 + 1/2 + 0) / 5 = 0.5.
_SCORES = [
    ([6, 5, 4, 3, 2, 1], 0),  # A: correct
    ([5, 6, 4, 3, 2, 1], 0),  # B: second
    ([1, 6, 2, 3, 4, 5], 1),  # C: correct
    ([6, 1, 2, 3, 4, 5], 1),  # D: last
    ([1, 2, 6, 3, 4, 5], 2),  # E: correct
    ([1, 2, 3, 4, 5, 6], 3),  # F: third
    ([1, 2, 3, 6, 4, 5], 3),  # G: correct
    ([6, 5, 4, 3, 2, 1], 5),  # H: last
    ([1, 2, 6, 3, 4, 5], 2),  # I: correct
]
_CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox")
_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


def _zeroshot_fixture(image_scores):
  """A FakeEmbedder whose prompt-ensemble class embeddings are exactly e_c.

  The two prompts of class c are e_c tilted by +-0.5 along an extra dimension (6): only their
  average (then normalised) lies on e_c, so a missing ensemble step shows in the numbers.
  """
  dim = 7
  texts = {}
  for c, name in enumerate(_CLASSES):
    for sign, template in zip((1, -1), _TEMPLATES):
      v = np.zeros(dim)
      v[c], v[6] = 1.0, 0.5 * sign
      texts[template.format(name)] = _unit(v)
  images = np.zeros((len(image_scores), dim))
  images[:, :6] = image_scores
  return FakeEmbedder(_unit(images), texts)


def _zeroshot(embedder, labels, name="animals"):
  data = sources.ArrayClassification(embedder.images(), labels, _CLASSES, _TEMPLATES)
  return evaluators.build(name, ml_collections.ConfigDict(
      dict(type="zeroshot_classification", log_steps=10, data=data)), embedder)


def test_zeroshot_metrics_match_hand_computed_values():
  scores, labels = zip(*_SCORES)
  embedder = _zeroshot_fixture(np.asarray(scores, np.float64))
  evaluator = _zeroshot(embedder, labels)
  result = dict(evaluator.run({"params": 0}))
  assert result == pytest.approx({"animals/top1": 5 / 9, "animals/top5": 7 / 9,
                                  "animals/mean_per_class_recall": 0.5,
                                  "animals/class_cosine": 0.0}, abs=1e-6)
  np.testing.assert_array_equal(evaluator.predictions["labels"], labels)
  np.testing.assert_array_equal(evaluator.predictions["top5"][:, 0],
                                [int(np.argmax(s)) for s in scores])


def test_zeroshot_class_embeddings_are_the_normalised_prompt_mean_and_cached():
  from cloob_jax.evaluators import zeroshot
  embedder = _zeroshot_fixture(np.eye(6))
  variables = {"params": np.zeros(3)}
  weights = zeroshot.class_embeddings(embedder, variables, _CLASSES, _TEMPLATES)
  np.testing.assert_allclose(weights, np.eye(7)[:6], atol=1e-6)
  zeroshot.class_embeddings(embedder, variables, _CLASSES, _TEMPLATES)
  assert embedder.text_calls == 1  # same variables object: cached
  zeroshot.class_embeddings(embedder, variables, _CLASSES[:3], _TEMPLATES)
  assert embedder.text_calls == 2  # other class names: computed
  zeroshot.class_embeddings(embedder, {"params": np.zeros(3)}, _CLASSES, _TEMPLATES)
  assert embedder.text_calls == 3  # new weights: the cache was dropped


def test_perfectly_separable_zeroshot_scores_100_percent():
  rng = np.random.default_rng(0)
  labels = np.arange(30) % 6
  scores = np.eye(6)[labels] * 3 + 0.1 * rng.random((30, 6))
  result = dict(_zeroshot(_zeroshot_fixture(scores), labels, "sep").run({}))
  assert result == pytest.approx({"sep/top1": 1.0, "sep/top5": 1.0,
                                  "sep/mean_per_class_recall": 1.0, "sep/class_cosine": 0.0},
                                 abs=1e-6)


def test_class_cosine_is_the_mean_over_distinct_class_pairs():
  e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # cosines 1, 0, 0 between pairs
  assert metrics.class_cosine(e) == pytest.approx(1 / 3)
  assert metrics.class_cosine(np.ones((4, 3))) == pytest.approx(1.0)  # indistinguishable
  with pytest.raises(ValueError, match="at least 2 classes"):
    metrics.class_cosine(np.ones((1, 3)))


def test_fewer_than_five_classes_have_no_top5():
  topk = np.array([[0, 1, 2], [2, 0, 1]])
  assert metrics.classification_metrics(topk, np.array([0, 0]), 3) == {
      "top1": 0.5, "mean_per_class_recall": 0.5}


def test_topk_breaks_ties_by_lower_index():
  keys = np.eye(3, dtype=np.float32)
  np.testing.assert_array_equal(metrics.topk_indices(np.array([[1.0, 1.0, 0.0]]), keys, 3),
                                [[0, 1, 2]])


# ----------------------------------------------------------------------------
# Retrieval.


def _retrieval_case():
  """3 images (e_0, e_1, e_2) and 4 captions; image 0 has two.

  Hand-computed: image->text: I0's best own caption t0 ranks 1st; I1's t2 is beaten by t1;
  I2's t3 is beaten by t2 -> R@1 = 1/3, R@2 = 1. Text->image: t0 -> I0 1st; t1 prefers I1;
  t2 prefers I2; t3 -> I2 1st -> R@1 = 2/4, R@2 = 1.
  """
  e = np.eye(3)
  images = _unit(e)
  captions = _unit([e[0] + 0.1 * e[1], e[1] + 0.5 * e[0], e[2] + 0.2 * e[1], e[2] + 0.3 * e[0]])
  return images, captions, np.array([0, 0, 1, 2])


def test_retrieval_recalls_match_hand_computed_values():
  images, captions, text_image = _retrieval_case()
  assert metrics.retrieval_recalls(images, captions, text_image, ks=(1, 2)) == pytest.approx({
      "image_to_text_recall@1": 1 / 3, "image_to_text_recall@2": 1.0,
      "text_to_image_recall@1": 0.5, "text_to_image_recall@2": 1.0})


def test_retrieval_evaluator_through_the_registry():
  images, captions, text_image = _retrieval_case()
  names = ["t0", "t1", "t2", "t3"]
  embedder = FakeEmbedder(images, dict(zip(names, captions)))
  data = sources.ArrayRetrieval(embedder.images(), [["t0", "t1"], ["t2"], ["t3"]])
  evaluator = evaluators.build("coco", dict(type="retrieval", data=data, ks=(1, 2)), embedder)
  assert dict(evaluator.run({})) == pytest.approx({
      "coco/image_to_text_recall@1": 1 / 3, "coco/image_to_text_recall@2": 1.0,
      "coco/text_to_image_recall@1": 0.5, "coco/text_to_image_recall@2": 1.0})


def test_perfect_retrieval_scores_one():
  x = _unit(np.random.default_rng(0).standard_normal((20, 8)))
  out = metrics.retrieval_recalls(x, x, np.arange(20), ks=(1,))
  assert out == {"image_to_text_recall@1": 1.0, "text_to_image_recall@1": 1.0}


# ----------------------------------------------------------------------------
# Linear probe.


def _clusters(n, num_classes=4, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = 3 * np.random.default_rng(123).standard_normal((num_classes, dim))
  labels = np.arange(n) % num_classes
  return (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32), labels


def test_linear_probe_beats_chance_on_separable_clusters():
  train, val, test = _clusters(120, seed=0), _clusters(40, seed=1), _clusters(80, seed=2)
  result = linear_probe.probe(train, val, test, num_classes=4, l2_grid=(1e-4, 1e-2, 1.0))
  assert result["top1"] > 0.9  # chance: 0.25
  assert result["val_top1"] > 0.9
  assert result["l2"] in (1e-4, 1e-2, 1.0)


def test_linear_probe_evaluator_splits_validation_from_train():
  # 160 training rows of 16 features, as above: the compiled fit is shared.
  x, labels = _clusters(200, seed=3)
  embedder = FakeEmbedder(_unit(x), {})
  classes = ("a", "b", "c", "d")
  train = sources.ArrayClassification(embedder.images(160), labels[:160], classes)
  test = sources.ArrayClassification(embedder.images(200)[160:], labels[160:], classes)
  evaluator = evaluators.build("probe", dict(type="linear_probe", train_data=train,
                                             test_data=test, l2_grid=(1e-3, 1e-1)), embedder)
  result = dict(evaluator.run({}))
  assert set(result) == {"probe/top1", "probe/val_top1", "probe/l2"}
  assert result["probe/top1"] > 0.8


# ----------------------------------------------------------------------------
# Embedding analyses.


def test_effective_eigenvalues_match_numpy():
  rng = np.random.default_rng(0)
  scales = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.1, 0.01, 0.001])
  x = rng.standard_normal((500, 8)) * scales
  eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1]
  for fraction in (0.5, 0.9, 0.99, 0.999):
    expected = int(np.argmax(np.cumsum(eig) / eig.sum() >= fraction)) + 1
    assert metrics.effective_eigenvalues(x, fraction) == expected
  # Points on a line: one effective eigenvalue; isotropic points: (nearly) all of them.
  assert metrics.effective_eigenvalues(np.outer(rng.standard_normal(50), np.ones(4))) == 1
  assert metrics.effective_eigenvalues(rng.standard_normal((5000, 6))) == 6


def test_alignment_and_uniformity_match_their_definitions():
  rng = np.random.default_rng(1)
  x, y = _unit(rng.standard_normal((12, 5))), _unit(rng.standard_normal((12, 5)))
  assert metrics.alignment(x, y) == pytest.approx(
      np.mean([np.sum((a - b) ** 2) for a, b in zip(x, y)]), rel=1e-6)
  pairs = [np.exp(-2 * np.sum((x[i] - x[j]) ** 2)) for i in range(12) for j in range(12) if i != j]
  assert metrics.uniformity(x) == pytest.approx(math.log(np.mean(pairs)), rel=1e-6)


def test_sphere_uniformity_statistics():
  rng = np.random.default_rng(2)
  x = _unit(rng.standard_normal((40, 3)))
  angles = [math.acos(np.clip(x[i] @ x[j], -1, 1)) for i in range(40) for j in range(i + 1, 40)]
  assert metrics.ajne_statistic(x) == pytest.approx(40 / 4 - sum(angles) / (40 * math.pi))
  assert metrics.rayleigh_statistic(x) == pytest.approx(40 * 3 * np.sum(x.mean(0) ** 2))
  # Uniform points: Ajne ~ 1/4, Rayleigh ~ d; one repeated point: Ajne = n/4, Rayleigh = n d.
  uniform = _unit(rng.standard_normal((2000, 8)))
  assert abs(metrics.ajne_statistic(uniform) - 0.25) < 0.5
  assert metrics.rayleigh_statistic(uniform) < 30
  same = np.tile(uniform[:1], (50, 1))
  assert metrics.ajne_statistic(same) == pytest.approx(50 / 4, abs=1e-3)
  assert metrics.rayleigh_statistic(same) == pytest.approx(50 * 8)


def test_embedding_analysis_evaluator_yields_every_metric():
  rng = np.random.default_rng(3)
  images = _unit(rng.standard_normal((10, 6)))
  texts = {f"c{i}": v for i, v in enumerate(_unit(rng.standard_normal((10, 6))))}
  embedder = FakeEmbedder(images, texts)
  data = sources.ArrayRetrieval(embedder.images(), [[f"c{i}", "unused"] for i in range(10)])
  result = dict(evaluators.build("an", dict(type="embedding_analysis", data=data),
                                 embedder).run({}))
  expected = embedding_analysis.analyse(images, np.stack([texts[f"c{i}"] for i in range(10)]))
  assert result == pytest.approx({f"an/{k}": v for k, v in expected.items()})
  assert len(result) == 9


# ----------------------------------------------------------------------------
# Registry.


def test_build_all_skips_unlocated_data_and_refuses_unknown_things():
  embedder = FakeEmbedder(np.eye(2), {})
  configs = ml_collections.ConfigDict(dict(
      here=dict(type="retrieval", log_steps=5, data=sources.ArrayRetrieval(
          embedder.images(), [["a"], ["b"]])),
      missing=dict(type="zeroshot_classification", data=dict(path=None, hint="pass :x=PATH"))))
  built = evaluators.build_all(configs, embedder)
  assert list(built) == ["here"]
  with pytest.raises(evaluators.DataUnavailable, match="pass :x=PATH"):
    evaluators.build_all(configs, embedder, skip_unavailable=False)
  with pytest.raises(ValueError, match="unknown evaluator type 'zeroshot'"):
    evaluators.build("x", dict(type="zeroshot", data={}), embedder)
  with pytest.raises(TypeError, match="'x'.*unexpected keyword"):
    evaluators.build("x", dict(type="retrieval", data={"source": "arrays"}, k=3), embedder)


def test_plugins_by_dotted_path():
  evaluator = evaluators.build("mine", dict(type=f"{__name__}.ConstantEvaluator", value=2.5),
                               None)
  assert list(evaluator.run({})) == [("mine/value", 2.5)]


class ConstantEvaluator(evaluators.Evaluator):

  def __init__(self, name, embedder, *, value):
    super().__init__(name, embedder)
    self.value = value

  def run(self, variables):
    yield self._metric("value", self.value)


# ----------------------------------------------------------------------------
# The real Embedder on a tiny model, over the 8 virtual devices.


@pytest.fixture(scope="module")
def tiny():
  module = models.create_model("ViT-tiny")
  variables = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                                   np.zeros((1, 77), np.int32))
  return module, variables


def test_embedder_pads_shards_and_matches_the_module(tiny):
  module, variables = tiny
  embedder = evaluators.Embedder(module, batch_size=30, progress=False)  # rounded up to 32
  assert embedder.batch_size == 32 and embedder.mesh.shape["data"] == len(jax.devices())
  images = np.random.default_rng(0).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
  got = embedder.embed_images(variables, images)
  apply = jax.jit(module.apply, static_argnames="method")  # faster than eager on this CPU
  expected = apply(variables, inputs.normalize(images), method=module.encode_image)
  assert got.shape == (37, 64) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # Batches of any size give the same rows.
  streamed = embedder.embed_image_batches(variables, [images[:5], images[5:6], images[6:]])
  np.testing.assert_allclose(streamed, got, atol=1e-6)
  texts = ["a red circle", "two blue squares on the left", "a photo"]
  expected = apply(variables, tokenizer.tokenize(texts), method=module.encode_text)
  np.testing.assert_allclose(embedder.embed_strings(variables, texts), expected, atol=1e-5)
  assert embedder.embed_images(variables, images[:0]).shape == (0, 64)
  with pytest.raises(ValueError, match="expected uint8 images"):
    embedder.embed_images(variables, images.astype(np.float32))


def test_embedder_places_numpy_variables_once(tiny):
  module, variables = tiny
  embedder = evaluators.Embedder(module, batch_size=32, progress=False)
  host = jax.tree.map(np.asarray, variables)
  first = embedder._place(host)
  assert embedder._place(host) is first  # same object: no second transfer
  assert embedder._place(jax.tree.map(np.asarray, variables)) is not first


# ----------------------------------------------------------------------------
# Splitting eval sets between processes (the 2-process run: tests/eval_multiprocess_test.py).


def test_classification_counts_of_shares_add_up_to_the_whole_set():
  scores, labels = zip(*_SCORES)
  top = metrics.topk_indices(_unit(scores), np.eye(6, dtype=np.float32), 5)
  labels = np.asarray(labels)
  whole = metrics.classification_counts(top, labels, 6)
  for processes in (2, 3, 4, 12):  # 12 > 9 examples: some shares are empty
    shares = [metrics.classification_counts(top[p::processes], labels[p::processes], 6)
              for p in range(processes)]
    summed = {k: sum(s[k] for s in shares) for k in whole}
    for key in whole:
      np.testing.assert_array_equal(summed[key], whole[key])
  assert metrics.metrics_from_counts(whole) == metrics.classification_metrics(top, labels, 6)
  assert metrics.metrics_from_counts(whole) == pytest.approx(
      {"top1": 5 / 9, "top5": 7 / 9, "mean_per_class_recall": 0.5})
  with pytest.raises(ValueError, match="no examples"):
    metrics.metrics_from_counts(metrics.classification_counts(top[:0], labels[:0], 6))


def test_shares_cover_every_example_once_and_interleave_back_in_order():
  embedder = FakeEmbedder(np.eye(2), {})
  for processes in (1, 2, 3, 4):
    for n in range(10):
      shares = []
      for rank in range(processes):
        embedder.process_count, embedder.process_rank = processes, rank
        share = embedder.share(n)
        padded = np.full(embedder.share_size(n), -1)
        padded[:len(share)] = share
        shares.append(padded)
      assert sorted(np.concatenate(shares)[np.concatenate(shares) >= 0]) == list(range(n))
      np.testing.assert_array_equal(common.interleave(np.stack(shares), n), np.arange(n))
  # Every process makes the same number of device calls: missing batches are padding.
  empty = np.zeros((0, 2))
  a, b = np.ones((3, 2)), np.ones((1, 2))
  assert [x.shape[0] for x in common._exactly(iter([a, b]), 3, empty)] == [3, 1, 0]
  with pytest.raises(ValueError, match="more rows than 1 device calls"):
    list(common._exactly(iter([a, b]), 1, empty))


def test_embedder_on_one_process_embeds_the_whole_set_as_its_share(tiny):
  module, variables = tiny
  embedder = evaluators.Embedder(module, batch_size=16, progress=False)
  assert (embedder.process_count, embedder.process_rank) == (1, 0)
  images = np.random.default_rng(1).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(embedder.share(21), np.arange(21))
  share = embedder.embed_image_share(variables, [images[:4], images[4:]], 21)
  np.testing.assert_array_equal(share, embedder.embed_images(variables, images))
  np.testing.assert_array_equal(embedder.gather(share, 21), share)
  counts = {"top1": np.arange(3)}
  assert embedder.sum_over_processes(counts) is counts
