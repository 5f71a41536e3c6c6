"""The attribute probe (evaluators/attribute_probe.py): its data, and probes that find what a
frozen embedding holds, on image and on caption embeddings."""

import jax
import numpy as np
import pytest

from cloob_jax import evaluators
from cloob_jax import models
from cloob_jax.data import synthetic
from cloob_jax.data.synthetic import world


def test_attribute_examples_are_deterministic_labelled_and_captioned():
  images, captions, labels = synthetic.attribute_examples(48, image_size=32, seed=3)
  again = synthetic.attribute_examples(48, image_size=32, seed=3)
  np.testing.assert_array_equal(images, again[0])
  assert captions == again[1] and images.shape == (48, 32, 32, 3) and len(captions) == 48
  # One object per scene: its colour, shape, size and position; the count, from scenes of 1-3.
  assert sorted(labels) == sorted(set(synthetic.ATTRIBUTES) - set(synthetic.SCENE_ATTRIBUTES))
  _, _, counts = synthetic.attribute_examples(48, image_size=32, seed=3, single_object=False)
  assert sorted(counts) == ["count"] and sorted(set(counts["count"])) == [0, 1, 2]
  for name, classes in synthetic.ATTRIBUTES.items():
    found = labels.get(name, counts.get(name))
    assert found.shape == (48,) and 0 <= found.min() <= found.max() < classes
  assert len(set(labels["colour"])) > 4
  # A detailed caption names the object's colour (one of its words).
  for caption, colour in zip(captions, labels["colour"]):
    assert any(w in caption.lower() for w in world.COLOUR_SYNONYMS[world.COLOURS[colour]]), caption
  other = synthetic.attribute_examples(48, image_size=32, seed=4)[0]
  assert not np.array_equal(images, other)


def test_probes_find_colour_in_random_towers_and_report_every_attribute():
  # Untrained towers: colour survives a random projection of the pixels (and the colour word
  # through a random text tower), so its probe beats chance by far; every attribute and both
  # sides are reported, each a test accuracy.
  model = models.create_model("ViT-tiny")
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                                  np.zeros((1, 77), np.int32))
  embedder = evaluators.Embedder(model, batch_size=64, progress=False)
  probe = evaluators.build("attributes", dict(type="attribute_probe", num_examples=512, seed=0),
                           embedder)
  results = dict(probe.run(variables))
  assert list(results) == [f"attributes/{side}/{a}/top1" for side in ("image", "text")
                           for a in synthetic.ATTRIBUTES]
  assert all(0 <= v <= 1 for v in results.values())
  print(results)
  # Chance is 1/8; on 128 test scenes a chance-level probe scores 0.125 +- 0.03 (seen: image
  # 0.53, text 0.28).
  assert results["attributes/image/colour/top1"] > 0.2, results
  assert results["attributes/text/colour/top1"] > 0.2, results


def test_bad_attributes_are_refused_in_one_line():
  with pytest.raises(ValueError, match=r"eval 'a': unknown attributes \['hue'\]"):
    evaluators.build("a", dict(type="attribute_probe", attributes=["hue"]), None)
