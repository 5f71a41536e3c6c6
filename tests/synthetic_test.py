"""Tests for the synthetic image-caption world (cloob_jax.data.synthetic)."""

import dataclasses
import pickle
import re

import grain
import numpy as np
import pytest

from cloob_jax.data import synthetic as S

# Word -> concept maps built from the world's own vocabulary; a caption word in one of
# these names exactly one colour / shape / size.
COLOUR_OF = {w: S.COLOURS.index(c) for c, words in S.COLOUR_SYNONYMS.items() for w in words}
SHAPE_OF = {form.split()[0]: S.SHAPES.index(s) for s, nouns in S.SHAPE_NOUNS.items()
            for pair in nouns for form in pair}
SIZE_OF = {w: S.SIZES.index(z) for z, words in S.SIZE_WORDS.items() for w in words}
GENERIC = {form for pair in S.GENERIC_NOUNS for form in pair}
COUNT_OF = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "2": 2, "pair": 2,
            "three": 3, "3": 3}
# Second words of two-word nouns ("plus sign", "star shape").
NOUN_TAILS = {form.split()[1] for nouns in S.SHAPE_NOUNS.values() for pair in nouns
              for form in pair if " " in form}


def words(text):
  return re.findall(r"[a-z0-9]+", text.lower())


def test_vocabulary_is_unambiguous():
  vocab = [set(COLOUR_OF), set(SHAPE_OF), set(SIZE_OF), GENERIC]
  for i in range(len(vocab)):
    for j in range(i + 1, len(vocab)):
      assert not vocab[i] & vocab[j]
  assert len(S.COLOURS) >= 8 and len(S.SHAPES) >= 6
  assert len(set(map(tuple, S.COLOUR_RGB))) == len(S.COLOURS)


def test_deterministic_per_seed_split_index():
  a, b = S.SyntheticWorld("train", seed=3), S.SyntheticWorld("train", seed=3)
  for i in (0, 1, 977):
    ea, eb = a[i], b[i]
    np.testing.assert_array_equal(ea["image"], eb["image"])
    assert ea["caption"] == eb["caption"]
  others = [S.SyntheticWorld("train", seed=4), S.SyntheticWorld("test", seed=3)]
  for other in others:
    assert any(not np.array_equal(a[i]["image"], other[i]["image"]) for i in range(4))
    assert any(a[i]["caption"] != other[i]["caption"] for i in range(4))
  # Order of access does not matter (no hidden state).
  np.testing.assert_array_equal(S.SyntheticWorld("train", seed=3)[977]["image"], a[977]["image"])


@pytest.mark.parametrize("image_size", [32, 64])
def test_example_fields(image_size):
  world = S.SyntheticWorld("test", image_size=image_size, num_examples=50)
  assert len(world) == 50
  for i in range(10):
    e = world[i]
    assert e["image"].shape == (image_size, image_size, 3) and e["image"].dtype == np.uint8
    assert isinstance(e["caption"], str) and e["caption"]
    scene = world.scene(i)
    n = len(scene.objects)
    assert e["count"] == n and 1 <= n <= S.MAX_OBJECTS
    main = scene.objects[0]
    assert (e["colour"], e["shape"], e["size"], e["position"]) == (
        main.colour, main.shape, main.size, main.position)
    assert e["combo"] == main.colour * len(S.SHAPES) + main.shape
    assert e["object_colour"].shape == (S.MAX_OBJECTS,)
    assert list(e["object_shape"][:n]) == [o.shape for o in scene.objects]
    assert (e["object_shape"][n:] == -1).all()
    assert len(set(e["object_position"][:n].tolist())) == n  # one object per cell
  with pytest.raises(IndexError):
    world[50]


def test_heldout_combinations_never_in_train():
  held = {(S.COLOURS.index(c), S.SHAPES.index(s)) for c, s in S.HELDOUT_COMBOS}
  assert 0.08 <= len(held) / (len(S.COLOURS) * len(S.SHAPES)) <= 0.15
  train = S.SyntheticWorld("train")
  seen = set()
  for i in range(3000):
    for o in train.scene(i).objects:
      assert (o.colour, o.shape) not in held, (i, o)
      seen.add((o.colour, o.shape))
  assert len(seen) == len(S.COLOURS) * len(S.SHAPES) - len(held)  # all others do occur
  heldout = S.SyntheticWorld("heldout")
  for i in range(200):
    e = heldout[i] if i < 5 else S.scene_labels(heldout.scene(i))
    assert e["heldout_combo"] >= 0
    assert S.HELDOUT_COMBOS[e["heldout_combo"]] == (S.COLOURS[e["colour"]], S.SHAPES[e["shape"]])


def test_families_are_minimal_pairs():
  world = S.SyntheticWorld("train", seed=2, family_size=4)
  assert world[6]["caption"] == S.SyntheticWorld("train", seed=2, family_size=4)[6]["caption"]
  held = {(S.COLOURS.index(c), S.SHAPES.index(s)) for c, s in S.HELDOUT_COMBOS}
  changed_size = 0
  for family in range(50):
    scenes = [world.scene(4 * family + m) for m in range(4)]
    base = scenes[0]
    for scene in scenes[1:]:
      assert (scene.background, scene.background_level) == (base.background,
                                                           base.background_level)
      assert len(scene.objects) == len(base.objects)
      for obj, ref in zip(scene.objects, base.objects):
        assert (obj.colour, obj.position) == (ref.colour, ref.position)
        assert obj.shape != ref.shape
        assert (obj.colour, obj.shape) not in held
        changed_size += obj.size != ref.size
      # Objects that shared a colour-shape pair still share one.
      for i, a in enumerate(base.objects):
        for j, b in enumerate(base.objects):
          if (a.colour, a.shape) == (b.colour, b.shape):
            assert scene.objects[i].shape == scene.objects[j].shape
  assert 0.3 < changed_size / sum(3 * len(world.scene(4 * f).objects) for f in range(50)) < 0.7
  # A family of one is the plain world.
  plain, ones = S.SyntheticWorld("train", seed=2), S.SyntheticWorld("train", seed=2, family_size=1)
  np.testing.assert_array_equal(plain[9]["image"], ones[9]["image"])
  assert "family_size=4" in repr(world) and "family_size" not in repr(plain)
  with pytest.raises(ValueError, match="family_size must be a positive integer, got 0"):
    S.SyntheticWorld("train", family_size=0)


def test_train_shuffle_keeps_families_whole():
  ds = grain.MapDataset.range(24).seed(7)
  plain = S.SyntheticWorld("train", num_examples=24).train_shuffle(
      ds, seed=7, global_batch_size=4, num_workers=2)
  assert [plain[i] for i in range(48)] == [ds.shuffle().repeat()[i] for i in range(48)]
  world = S.SyntheticWorld("train", num_examples=24, family_size=4)
  order = world.train_shuffle(ds, seed=7, global_batch_size=8, num_workers=0)
  epochs = [[order[i] for i in range(24 * e, 24 * (e + 1))] for e in range(2)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(24))
    for start in range(0, 24, 4):
      first = epoch[start]
      assert first % 4 == 0 and epoch[start:start + 4] == list(range(first, first + 4))
  assert epochs[0] != epochs[1]
  with pytest.raises(ValueError, match="not divisible by the source's family_size 4"):
    world.train_shuffle(ds, seed=7, global_batch_size=6, num_workers=0)
  assert [world.train_shuffle(ds, seed=7, global_batch_size=8, num_workers=1)[i]
          for i in range(48)] == sum(epochs, [])  # one worker batches the whole stream
  with pytest.raises(ValueError, match="family_size 4 needs num_workers <= 1"):
    world.train_shuffle(ds, seed=7, global_batch_size=8, num_workers=2)


def _check_caption(caption, scene):
  """Asserts that every colour, shape, count and position claim of a caption is true."""
  objs = scene.objects
  toks = words(caption)
  for t in toks:
    if t in COLOUR_OF:
      assert COLOUR_OF[t] in {o.colour for o in objs}, (caption, t)
    if t in SHAPE_OF:
      assert SHAPE_OF[t] in {o.shape for o in objs}, (caption, t)
  # Adjacent colour + shape words are bound to one object.
  for t, u in zip(toks, toks[1:]):
    if t in COLOUR_OF and u in SHAPE_OF:
      assert (COLOUR_OF[t], SHAPE_OF[u]) in {(o.colour, o.shape) for o in objs}, caption
  # "<count> [size] [colour] noun [in colour]" names exactly that many objects.
  for i, t in enumerate(toks):
    if t not in COUNT_OF:
      continue
    j = i + 1 + (t == "pair" and i + 1 < len(toks) and toks[i + 1] == "of")
    want = {}
    if j < len(toks) and toks[j] in SIZE_OF:
      want["size"], j = SIZE_OF[toks[j]], j + 1
    if j < len(toks) and toks[j] in COLOUR_OF:
      want["colour"], j = COLOUR_OF[toks[j]], j + 1
    if j >= len(toks) or (toks[j] not in SHAPE_OF and toks[j] not in GENERIC):
      continue  # not a noun phrase ("a photo of", "a single ...")
    if toks[j] in SHAPE_OF:
      want["shape"] = SHAPE_OF[toks[j]]
      j += 1 + (j + 1 < len(toks) and toks[j + 1] in NOUN_TAILS)
    else:
      j += 1
    if (j + 1 < len(toks) and toks[j] in ("in", "coloured", "colored")
        and toks[j + 1] in COLOUR_OF):
      want["colour"] = COLOUR_OF[toks[j + 1]]
    n = sum(all(getattr(o, k) == v for k, v in want.items()) for o in objs)
    assert n == COUNT_OF[t], (caption, t, want, n)
  # Positions of a lone object.
  if len(objs) == 1:
    row, col = divmod(objs[0].position, 3)
    for t, ok in (("left", col == 0), ("right", col == 2), ("top", row == 0),
                  ("upper", row == 0), ("bottom", row == 2), ("lower", row == 2)):
      assert ok or t not in toks, caption


def test_captions_are_true_and_varied():
  stats = {"colour": 0, "shape": 0, "count": 0, "position": 0}
  captions = set()
  for split in ("train", "test", "heldout"):
    world = S.SyntheticWorld(split, seed=1)
    for i in range(250):
      e = world[i]
      _check_caption(e["caption"], world.scene(i))
      toks = set(words(e["caption"]))
      stats["colour"] += bool(toks & set(COLOUR_OF))
      stats["shape"] += bool(toks & set(SHAPE_OF))
      stats["count"] += bool(toks & {"two", "three", "2", "3", "pair"})
      stats["position"] += bool(toks & {"left", "right", "top", "bottom", "centre", "center"})
      captions.add(e["caption"])
  assert len(captions) > 0.95 * 750
  # Each attribute is mentioned in some captions and left out of others.
  for k, v in stats.items():
    assert 0.1 * 750 < v < 0.95 * 750, (k, v)


def test_caption_mention_steers_what_captions_say():
  default = S.SyntheticWorld("train", seed=1)
  assert S.SyntheticWorld("train", seed=1, mention=S.CAPTION_MENTION)[5]["caption"] == (
      default[5]["caption"])  # the defaults are the world's own captions
  never_colour = S.SyntheticWorld("train", seed=1, mention={"colour": 0.0, "position": 1.0})
  colour_words = positions = 0
  for i in range(200):
    e = never_colour[i]
    _check_caption(e["caption"], never_colour.scene(i))
    np.testing.assert_array_equal(e["image"], default[i]["image"])  # only captions change
    toks = set(words(e["caption"]))
    colour_words += bool(toks & set(COLOUR_OF))
    positions += bool(toks & {"left", "right", "top", "bottom", "centre", "center", "middle"})
  assert colour_words == 0
  assert positions > 0.5 * 200  # groups spread over rows and columns have no position phrase
  assert "mention=" in repr(never_colour) and "mention=" not in repr(default)
  with pytest.raises(ValueError, match="unknown attribute 'hue'"):
    S.SyntheticWorld("train", mention={"hue": 0.5})
  with pytest.raises(ValueError, match="shape=1.5 is not a probability"):
    S.caption_mention({"shape": 1.5})


def test_render_objects_in_their_cells_with_their_colour():
  world = S.SyntheticWorld("test", seed=2)
  size = 64
  for i in range(30):
    scene = world.scene(i)
    empty = S.render(dataclasses.replace(scene, objects=()), size).astype(int)
    for o in scene.objects:
      alone = S.render(dataclasses.replace(scene, objects=(o,)), size).astype(int)
      ys, xs = np.nonzero(np.abs(alone - empty).sum(-1) > 0)
      assert len(ys) > 5
      row, col = divmod(o.position, 3)
      assert (xs * 3 // size == col).all() and (ys * 3 // size == row).all(), (i, o)
      # Fully covered pixels (a good share, even of a thin small star) have the object's colour.
      full = np.abs(alone - np.array(o.rgb)).max(-1) <= 1
      assert full.sum() > 0.15 * len(ys)


def test_zeroshot_tasks_are_consistent():
  tasks = S.zeroshot_tasks()
  assert {"colour", "shape", "position", "count", "size", "heldout_combination"} <= set(tasks)
  for name, task in tasks.items():
    assert task.name == name
    assert len(set(task.classnames)) == task.num_classes >= 2
    assert all(t.count("{}") == 1 for t in task.templates) and len(set(task.templates)) > 1
    assert task.chance == pytest.approx(1 / task.num_classes)
    n = 2 * task.num_classes
    images, labels = S.task_examples(name, n, image_size=32, seed=0)
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and set(labels.tolist()) == set(range(task.num_classes))
    again, _ = S.task_examples(task, n, image_size=32, seed=0)
    np.testing.assert_array_equal(images, again)
  assert tasks["heldout_combination"].classnames == tuple(f"{c} {s}" for c, s in S.HELDOUT_COMBOS)
  example = S.SyntheticWorld("test")[0]
  assert tasks["count"].label(example) == example["count"] - 1


def test_retrieval_examples():
  images, captions = S.retrieval_examples(6, image_size=32, seed=0, captions_per_image=4)
  assert images.shape == (6, 32, 32, 3) and len(captions) == 6
  again, captions_again = S.retrieval_examples(6, image_size=32, seed=0, captions_per_image=4)
  np.testing.assert_array_equal(images, again)
  assert captions == captions_again
  for caps in captions:
    assert len(caps) == 4 and len(set(caps)) > 1
    for c in caps:  # detailed: every caption names some colour and some shape
      assert set(words(c)) & set(COLOUR_OF) and set(words(c)) & set(SHAPE_OF)


def test_grain_source_and_pickle():
  world = S.SyntheticWorld("train", num_examples=64)
  ds = grain.MapDataset.source(world).seed(0).shuffle()
  assert len(ds) == 64
  e = ds[5]
  assert e["image"].shape == (64, 64, 3) and isinstance(e["caption"], str)
  batch = ds.batch(4)[1]
  assert batch["image"].shape == (4, 64, 64, 3)
  clone = pickle.loads(pickle.dumps(world))
  assert clone[7]["caption"] == world[7]["caption"]
  np.testing.assert_array_equal(clone[7]["image"], world[7]["image"])
