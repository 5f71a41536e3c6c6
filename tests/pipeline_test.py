"""Tests for cloob_jax.data.transforms and cloob_jax.data.pipeline."""

import io
import os
import subprocess
import sys
import time

import grain
import numpy as np
import pytest
from absl import flags
from PIL import Image

from cloob_jax.data import pipeline
from cloob_jax.data import records
from cloob_jax.data import synthetic
from cloob_jax.data import transforms
from cloob_jax.data.synthetic import families
from cloob_jax.models import inputs

S = 8    # output image size
L = 12   # context length


def solid_png(index: int, size=(16, 12)) -> bytes:
  """A single-colour image naming its record: survives any crop and resize."""
  img = np.zeros((size[1], size[0], 3), np.uint8)
  img[...] = (index % 256, index // 256, 77)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  return buf.getvalue()


def ids(batch) -> list[int]:
  px = batch["image"][:, 0, 0].astype(int)
  assert (batch["image"] == batch["image"][:, :1, :1]).all(), "not a solid image"
  return (px[:, 0] + 256 * px[:, 1]).tolist()


class ListSource:
  """In-memory random-access source of encoded records; `bad` maps index -> kind."""

  def __init__(self, n, bad=None):
    self.n, self.bad = n, dict(bad or {})

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    kind = self.bad.get(i)
    data = solid_png(i)
    caption = f"item {i}"
    if kind == "corrupt":
      data = data[: len(data) // 2]
    elif kind == "empty":
      data = b""
    elif kind == "bad_caption":
      caption = "   "
    elif kind == "unreadable":
      raise OSError("disk on fire")
    return {"image_bytes": data, "caption": caption, "key": str(i)}


def train_iter(source, **kw):
  kw = dict(dict(global_batch_size=4, image_size=S, context_length=L, seed=0,
                 process_index=0, process_count=1, num_workers=0, read_threads=2), **kw)
  return pipeline.create_train_iterator(source, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


# ---------------------------------------------------------------------------
# Transforms.


def test_random_resized_crop_box_bounds_and_scale():
  rng = np.random.default_rng(0)
  for h, w in [(100, 100), (60, 200), (300, 40)]:
    for _ in range(50):
      top, left, ch, cw = transforms.random_resized_crop_box(h, w, rng)
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
      if (h, w) == (100, 100):
        assert 0.88 <= ch * cw / (h * w) <= 1.0
        assert 3 / 4 - 0.03 <= cw / ch <= 4 / 3 + 0.03


def test_random_resized_crop_deterministic():
  img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  a = transforms.random_resized_crop(img, 16, np.random.default_rng(7))
  b = transforms.random_resized_crop(img, 16, np.random.default_rng(7))
  c = transforms.random_resized_crop(img, 16, np.random.default_rng(8))
  assert a.shape == (16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_resize_center_crop():
  img = np.zeros((20, 40, 3), np.uint8)
  img[:, :10] = 255   # left and right quarters are cut away by the centre crop
  img[:, 30:] = 255
  img[:, 10:30] = (10, 20, 30)
  out = transforms.resize_center_crop(img, 10)
  assert out.shape == (10, 10, 3)
  # Away from the crop edges (bicubic support reaches 2 px across them).
  np.testing.assert_array_equal(out[:, 2:-2], np.broadcast_to([10, 20, 30], (10, 6, 3)))
  same = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
  np.testing.assert_array_equal(transforms.resize_center_crop(same, 8), same)


def test_normalize():
  x = np.zeros((2, 1, 1, 3), np.uint8)
  x[1] = 255
  y = np.asarray(inputs.normalize(x))
  assert y.dtype == np.float32
  mean, std = np.array(transforms.CLIP_MEAN), np.array(transforms.CLIP_STD)
  np.testing.assert_allclose(y[0, 0, 0], -mean / std, rtol=1e-5)
  np.testing.assert_allclose(y[1, 0, 0], (1 - mean) / std, rtol=1e-5)


# ---------------------------------------------------------------------------
# Train pipeline.


def test_batches_shapes_and_tokens():
  b = next(train_iter(ListSource(16)))
  assert b["image"].shape == (4, S, S, 3) and b["image"].dtype == np.uint8
  assert b["tokens"].shape == (4, L) and b["tokens"].dtype == np.int32
  assert b["skipped"].shape == (4, len(records.REASONS))
  from cloob_jax.data import tokenizer
  np.testing.assert_array_equal(b["tokens"], tokenizer.tokenize([f"item {i}" for i in ids(b)], L))


def test_determinism_and_epoch_reshuffle():
  src = ListSource(16)
  a = [ids(b) for b in take(train_iter(src), 8)]
  b = [ids(b) for b in take(train_iter(src), 8)]
  c = [ids(b) for b in take(train_iter(src, seed=1), 8)]
  assert a == b
  assert a != c
  epoch1, epoch2 = sum(a[:4], []), sum(a[4:], [])
  assert sorted(epoch1) == sorted(epoch2) == list(range(16))
  assert epoch1 != epoch2  # reshuffled


def test_augmentation_is_deterministic():
  world = synthetic.SyntheticWorld(split="train", seed=0, image_size=32, num_examples=8)
  a = next(train_iter(world, image_size=24, augment_arrays=True))
  b = next(train_iter(world, image_size=24, augment_arrays=True))
  np.testing.assert_array_equal(a["image"], b["image"])
  # Ready images of the right size pass through untouched.
  plain = next(train_iter(world, image_size=32))
  assert any(np.array_equal(plain["image"][0], world[i]["image"]) for i in range(8))


def test_process_sharding():
  src = ListSource(16)
  seen = []
  for p in range(2):
    it = train_iter(src, global_batch_size=8, process_index=p, process_count=2)
    batches = take(it, 2)
    assert batches[0]["image"].shape[0] == 4
    seen.append(sum((ids(b) for b in batches), []))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(16))


class FamilySource(ListSource):
  """ListSource whose records come in families of `family_size` consecutive indices.

  Its `train_shuffle` hook orders them as the synthetic world orders its families.
  """

  def __init__(self, n, family_size):
    super().__init__(n)
    self.family_size = family_size

  def train_shuffle(self, ds, **layout):
    return families.shuffle_families(ds, self.family_size, **layout)


def test_families_stay_whole_in_every_batch_and_process():
  src = FamilySource(24, family_size=3)
  one = [ids(b) for b in take(train_iter(src, global_batch_size=6), 8)]  # 2 epochs
  for batch in one:  # two whole families, members in order
    for start in (0, 3):
      family = batch[start:start + 3]
      assert family[0] % 3 == 0 and family == list(range(family[0], family[0] + 3)), batch
  epoch1, epoch2 = sum(one[:4], []), sum(one[4:], [])
  assert sorted(epoch1) == sorted(epoch2) == list(range(24))
  assert epoch1 != epoch2  # families reshuffled
  assert one == [ids(b) for b in take(train_iter(src, global_batch_size=6), 8)]
  # Two processes split each global batch; together they hold the same whole families.
  per_process = [[ids(b) for b in take(train_iter(src, global_batch_size=6, process_index=p,
                                                   process_count=2), 8)] for p in range(2)]
  for step, batch in enumerate(one):
    assert sorted(per_process[0][step] + per_process[1][step]) == sorted(batch)
  it = train_iter(src, global_batch_size=6)  # a restored iterator goes on with the next batch
  take(it, 3)
  resumed = train_iter(src, global_batch_size=6)
  resumed.set_state(it.get_state())
  assert [ids(b) for b in take(resumed, 5)] == one[3:]
  with pytest.raises(ValueError, match="not divisible by the source's family_size 3"):
    train_iter(src, global_batch_size=4)
  with pytest.raises(ValueError, match="family_size 3 needs num_workers <= 1, got 2"):
    train_iter(src, global_batch_size=6, num_workers=2)


def test_state_continuation():
  src = ListSource(10)
  it = train_iter(src)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 4)  # crosses an epoch boundary
  it2 = train_iter(src)
  it2.set_state(state)
  for want, got in zip(expected, take(it2, 4)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])


def test_orbax_checkpoint(tmp_path):
  import orbax.checkpoint as ocp
  src = ListSource(12)
  it = train_iter(src)
  take(it, 2)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = ids(next(it))
  it2 = train_iter(src)
  mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  mngr.close()
  assert ids(next(it2)) == expected


def test_bad_records_skipped_and_counted():
  bad = {1: "corrupt", 4: "empty", 6: "bad_caption", 9: "unreadable", 13: "corrupt"}
  src = ListSource(16, bad)
  good = sorted(set(range(16)) - set(bad))          # 11 good records
  it = train_iter(src, global_batch_size=11)
  epochs = [next(it), next(it)]
  for b in epochs:
    assert sorted(ids(b)) == good
  counts = pipeline.skip_counts(epochs[0])
  counts2 = pipeline.skip_counts(epochs[1])
  # Batch 1 ends at epoch 1's last good record; epoch 1's later bad records are
  # counted in batch 2, together with epoch 2's bad records before its last good.
  total = {r: counts.get(r, 0) + counts2.get(r, 0) for r in records.REASONS}
  want = {"corrupt": 3, "empty": 1, "bad_caption": 1}  # "unreadable" counts as corrupt
  for reason in records.REASONS:
    assert want.get(reason, 0) <= total[reason] <= 2 * want.get(reason, 0)
    assert counts.get(reason, 0) <= want.get(reason, 0)


def test_skip_counts_exact_positions():
  # Unshuffled stream through the batcher itself: exact positions of the counts.
  prep = pipeline._Preprocess(S, train=True, scale=(0.9, 1), ratio=(0.75, 1.33),
                              augment_arrays=False, jpeg_draft=True,
                              max_pixels=10**7, min_side=8)
  src = ListSource(8, {0: "corrupt", 2: "empty", 3: "corrupt", 7: "bad_caption"})
  ds = (grain.MapDataset.source(pipeline._GuardedSource(src)).seed(0)
        .random_map(pipeline._TrainPreprocess(prep)).to_iter_dataset())
  it = iter(pipeline._SkipBadBatchIterDataset(ds, 2, pipeline._Collate(L)))
  b1, b2 = next(it), next(it)
  assert ids(b1) == [1, 4] and ids(b2) == [5, 6]
  c, e = records.REASON_INDEX["corrupt"], records.REASON_INDEX["empty"]
  assert b1["skipped"][0, c] == 1 and b1["skipped"][1, c] == 1 and b1["skipped"][1, e] == 1
  assert b2["skipped"].sum() == 0
  assert pipeline.skip_counts(b1) == {"empty": 1, "corrupt": 2}
  with pytest.raises(StopIteration):  # record 7 is bad: no full batch left
    next(it)


def test_all_bad_source_raises(monkeypatch):
  monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_BAD", 50)
  with pytest.raises(RuntimeError, match="bad records in a row"):
    next(train_iter(ListSource(4, {i: "empty" for i in range(4)})))


def test_shard_source_end_to_end(tmp_path):
  w = records.ShardWriter(str(tmp_path / "shard-00000.array_record"))
  for i in range(6):
    w.write(solid_png(i), f"item {i}", str(i))
  w.write(b"\xff\xd8 not a jpeg", "broken", "bad")
  w.close()
  records.write_manifest(str(tmp_path), {
      "format": records.FORMAT, "complete": True, "num_records": 7, "skipped": {},
      "shards": [{"file": "shard-00000.array_record", "num_records": 7, "skipped": {}}]})
  src = records.ImageTextSource(str(tmp_path))
  b = next(train_iter(src, global_batch_size=6))
  assert sorted(ids(b)) == list(range(6))


class JpegSource(ListSource):
  """Photo-like JPEGs (4:3, CC3M's shape) in place of the solid PNGs."""

  def __getitem__(self, i):
    from cloob_jax.bench.data import natural_image
    buf = io.BytesIO()
    natural_image(np.random.default_rng(i), 96, 72).save(buf, "JPEG", quality=90)
    return {"image_bytes": buf.getvalue(), "caption": f"item {i}", "key": str(i)}


def test_fast_decoder_deterministic_resumable_and_close_to_pillow():
  src = JpegSource(10)
  run = lambda it, n: [{k: v.copy() for k, v in b.items()} for b in take(it, n)]
  fast = run(train_iter(src, image_size=32), 4)   # 2 epochs; decoder="auto" is the default
  for want, got in zip(fast, run(train_iter(src, image_size=32), 4)):
    np.testing.assert_array_equal(want["image"], got["image"])
  it = train_iter(src, image_size=32)
  take(it, 1)
  resumed = train_iter(src, image_size=32)
  resumed.set_state(it.get_state())
  for want, got in zip(fast[1:], run(resumed, 3)):
    np.testing.assert_array_equal(want["image"], got["image"])
  slow = run(train_iter(src, image_size=32, decoder="pillow"), 4)
  for f, s in zip(fast, slow):
    np.testing.assert_array_equal(f["tokens"], s["tokens"])  # the same records, in order
    # and the same crops: measured 1.1 at this tiny size; another crop measures 6-8
    assert np.abs(f["image"].astype(int) - s["image"]).mean() < 2.0


def test_multiprocess_workers():
  flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags
  src = ListSource(24, {5: "corrupt"})
  it = train_iter(src, num_workers=1)
  it2 = train_iter(src, num_workers=1)
  try:
    first = take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    it2.set_state(state)
    assert [ids(b) for b in take(it2, 3)] == [ids(b) for b in expected]
    all_ids = sum((ids(b) for b in first + expected), [])
    assert 5 not in all_ids and len(all_ids) == 20
    assert sum(pipeline.skip_counts(b).get("corrupt", 0) for b in first + expected) >= 1
  finally:
    it.close()
    it2.close()


_ONE_WORKER_SCRIPT = """
import numpy as np
from cloob_jax.data import pipeline, synthetic

if __name__ == "__main__":  # grain spawns its workers: this file is imported again there
  world = synthetic.SyntheticWorld("train", seed=3, image_size=16, num_examples=40)
  def batches(num_workers):
    it = pipeline.create_train_iterator(
        world, global_batch_size=8, image_size=16, context_length=8, seed=1,
        process_index=0, process_count=1, num_workers=num_workers)
    out = [{k: v.copy() for k, v in next(it).items()} for _ in range(7)]  # 1.4 epochs
    if num_workers:
      it.close()
    return out
  for want, got in zip(batches(0), batches(1)):
    assert sorted(want) == sorted(got)
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  print("same batches")
"""


def test_one_worker_gives_the_batches_of_none_outside_absl_app_run(tmp_path):
  # What the demo relies on (configs/demo.py: num_workers=1), run as a notebook or a script
  # runs it: no absl.app.run, so nothing has parsed grain's flags.
  script = tmp_path / "one_worker.py"
  script.write_text(_ONE_WORKER_SCRIPT)
  done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0 and "same batches" in done.stdout, done.stderr[-3000:]


_KILLED_PARENT_SCRIPT = """
import time
from cloob_jax.data import pipeline, synthetic

if __name__ == "__main__":
  world = synthetic.SyntheticWorld("train", seed=3, image_size=16, num_examples=40)
  it = pipeline.create_train_iterator(
      world, global_batch_size=8, image_size=16, context_length=8, seed=1,
      process_index=0, process_count=1, num_workers=1)
  next(it)
  print("ready", flush=True)
  time.sleep(600)
"""


def _children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
          out.append(int(entry))
    except (OSError, ValueError, IndexError):
      continue
  return out


def _cmdline(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode()
  except OSError:
    return ""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_worker_exits_when_its_trainer_is_killed(tmp_path):
  script = tmp_path / "killed_parent.py"
  script.write_text(_KILLED_PARENT_SCRIPT)
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
    assert len(workers) == 1, [(p, _cmdline(p)) for p in _children(proc.pid)]
  finally:
    proc.kill()  # SIGKILL: nothing in the trainer runs, its workers are on their own
    proc.wait()
  deadline = time.time() + 20
  while os.path.exists(f"/proc/{workers[0]}") and time.time() < deadline:
    time.sleep(0.2)
  assert not os.path.exists(f"/proc/{workers[0]}"), "the worker outlived its killed trainer"
