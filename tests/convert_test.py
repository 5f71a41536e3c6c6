"""Tests for cloob_jax.data.convert: webdataset and CSV converters, resumption."""

import collections
import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from cloob_jax.data import convert
from cloob_jax.data import records


def image_bytes(seed, fmt="JPEG", size=(20, 16)) -> bytes:
  rng = np.random.default_rng(seed)
  img = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                np.ones((size[1] // 4 + 1, size[0] // 4 + 1, 1), np.uint8))
  buf = io.BytesIO()
  Image.fromarray(img[:size[1], :size[0]]).save(buf, fmt)
  return buf.getvalue()


GOOD = image_bytes(0)
# Each kind of bad sample: (files of the sample, expected reason).
BAD_SAMPLES = [
    ({"jpg": GOOD[: len(GOOD) // 2], "txt": b"truncated"}, "corrupt"),
    ({"jpg": b"", "txt": b"zero bytes"}, "empty"),
    ({"png": np.random.default_rng(1).bytes(200), "txt": b"random bytes"}, "corrupt"),
    ({"jpg": image_bytes(2, size=(40, 4)), "txt": b"too small"}, "too_small"),
    ({"jpg": image_bytes(3), "txt": b"\xff\xfe not utf-8"}, "bad_caption"),
    ({"jpg": image_bytes(4), "txt": b"  \n "}, "bad_caption"),
    ({"jpg": image_bytes(5)}, "missing"),             # no caption
    ({"txt": b"no image"}, "missing"),
]


def write_tar(path, samples):
  """samples: [(key, {ext: bytes})]; members in webdataset order."""
  with tarfile.open(path, "w") as tar:
    for key, files in samples:
      for ext, data in files.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_webdataset(root, num_tars=3, per_tar=4):
  """Tars of good samples and every kind of bad one.

  Returns ({key: (image bytes, caption)} of the good samples, Counter of bad reasons).
  """
  os.makedirs(root, exist_ok=True)
  good, bad = {}, collections.Counter()
  bad_iter = iter(BAD_SAMPLES)
  for t in range(num_tars):
    samples = []
    for i in range(per_tar):
      key = f"{t:03d}{i:04d}"
      data = image_bytes(100 * t + i, fmt="PNG" if i % 3 == 1 else "JPEG")
      ext = {0: "jpg", 1: "png", 2: "jpeg", 3: "webp"}[i % 4]
      if ext == "webp":
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buf, "WEBP")
        data = buf.getvalue()
      caption = f"sample {key} with a \"quote\""
      files = {ext: data, "txt": caption.encode()}
      if i == 2:  # caption from json only
        files = {ext: data, "json": b'{"caption": "from json %s"}' % key.encode()}
        caption = f"from json {key}"
      samples.append((key, files))
      good[key] = (data, caption)
    for j in range(3):  # a few bad samples per tar
      files, reason = next(bad_iter, (None, None))
      if files is not None:
        samples.insert(j * 2 + 1, (f"{t:03d}bad{j}", files))
        bad[reason] += 1
    write_tar(os.path.join(root, f"{t:05d}.tar"), samples)
  return good, bad


def read_all(out_dir):
  src = records.ImageTextSource(out_dir)
  return [src[i] for i in range(len(src))]


def check_output(out_dir, good, bad):
  recs = read_all(out_dir)
  keys = [r["key"] for r in recs]
  assert len(keys) == len(set(keys)), "duplicated records"
  assert set(keys) == set(good), "lost or extra records"
  for r in recs:
    assert r["image_bytes"] == good[r["key"]][0]  # original bytes, not re-encoded
    assert r["caption"] == good[r["key"]][1]
  m = records.read_manifest(out_dir)
  assert m["complete"] and m["num_records"] == len(good)
  assert m["skipped"] == {k: v for k, v in bad.items() if v}
  return recs


def test_expand_braces():
  assert convert.expand_braces("a/{008..011}.tar") == [
      "a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
  assert convert.expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
  assert convert.expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset(tmp_path):
  good, bad = make_webdataset(str(tmp_path / "in"))
  assert sum(bad.values()) == len(BAD_SAMPLES)
  m = convert.convert_webdataset(str(tmp_path / "in/{00000..00002}.tar"),
                                 str(tmp_path / "out"), workers=1, progress=False)
  assert [s["file"] for s in m["shards"]] == [f"shard-{u:05d}.array_record" for u in range(3)]
  assert [s["input"] for s in m["shards"]] == [
      str(tmp_path / f"in/{t:05d}.tar") for t in range(3)]
  check_output(str(tmp_path / "out"), good, bad)


def test_webdataset_broken_inputs(tmp_path):
  good, bad = make_webdataset(str(tmp_path / "in"), num_tars=2)
  # A missing tar (img2dataset leaves gaps) and a truncated one.
  with open(tmp_path / "in/00001.tar", "rb") as f:
    data = f.read()
  with open(tmp_path / "in/00001.tar", "wb") as f:
    f.write(data[:len(data) // 2])
  m = convert.convert_webdataset(str(tmp_path / "in/{00000..00002}.tar"),
                                 str(tmp_path / "out"), workers=1, progress=False)
  assert m["complete"]
  assert "error" in m["shards"][1] and "error" in m["shards"][2]
  assert m["shards"][2]["num_records"] == 0
  keys = {r["key"] for r in read_all(str(tmp_path / "out"))}
  assert {k for k in good if k.startswith("000")} <= keys
  assert 0 < len([k for k in keys if k.startswith("001")]) < 4


def make_csv(root, num_rows=11, separator="\t"):
  """A captions file (TSV unquoted, or quoted CSV), its image dir, good records, bad counts."""
  img_dir = os.path.join(root, "images")
  os.makedirs(os.path.join(img_dir, "sub"))
  good, bad = {}, collections.Counter()
  rows = []
  for i in range(num_rows):
    rel = f"sub/{i:03d}.jpg"
    data = image_bytes(i)
    with open(os.path.join(img_dir, rel), "wb") as f:
      f.write(data)
    caption = f"\"photo\" number {i}, quoted"  # a leading quote: TSVs are not quoted
    good[rel] = (data, caption)
    rows.append([caption, rel, "x"])
  with open(os.path.join(img_dir, "sub/trunc.jpg"), "wb") as f:
    f.write(GOOD[:len(GOOD) // 2])
  open(os.path.join(img_dir, "sub/empty.jpg"), "wb").close()
  with open(os.path.join(img_dir, "sub/small.png"), "wb") as f:
    f.write(image_bytes(9, fmt="PNG", size=(5, 30)))
  bad_rows = [
      (["missing file", "sub/nope.jpg", "x"], "missing"),
      (["  ", "sub/000.jpg", "x"], "bad_caption"),
      (["truncated", "sub/trunc.jpg", "x"], "corrupt"),
      (["only-one-column"], "missing"),  # malformed: no image path
      (["empty file", "sub/empty.jpg", "x"], "empty"),
      (["too small", "sub/small.png", "x"], "too_small"),
  ]
  for j, (row, reason) in enumerate(bad_rows):
    rows.insert(1 + 2 * j, row)
    bad[reason] += 1

  def line(row):
    if separator == "\t":
      return "\t".join(row)
    return separator.join('"' + c.replace('"', '""') + '"' for c in row)

  path = os.path.join(root, "captions.tsv")
  with open(path, "wb") as f:
    f.write("\n".join(line(r) for r in [["title", "filepath", "extra"]] + rows).encode())
    # Not UTF-8 (latin-1 é), in the last row.
    f.write(b"\n" + line(["caf\xe9", "sub/001.jpg", "x"]).encode("latin-1") + b"\n")
  bad["bad_caption"] += 1
  return path, img_dir, good, bad


def test_csv(tmp_path):
  path, img_dir, good, bad = make_csv(str(tmp_path))
  m = convert.convert_csv(path, str(tmp_path / "out"), image_root=img_dir,
                          rows_per_shard=4, workers=1, progress=False)
  assert len(m["shards"]) == 5  # 11 good + 7 bad rows, 4 per shard
  assert m["shards"][0]["input"] == "rows 0..3"
  check_output(str(tmp_path / "out"), good, bad)


def test_cli_csv_with_comma_and_worker_pool(tmp_path):
  path, img_dir, good, bad = make_csv(str(tmp_path), num_rows=6, separator=",")
  m = convert.main(["csv", path, str(tmp_path / "out"), f"--image-root={img_dir}",
                    "--separator=,", "--rows-per-shard=3", "--workers=2", "--no-progress"])
  assert m["complete"] and len(m["shards"]) == 5
  check_output(str(tmp_path / "out"), good, bad)


def test_resume_after_failure(tmp_path, monkeypatch):
  good, bad = make_webdataset(str(tmp_path / "in"), num_tars=4, per_tar=3)
  pattern, out = str(tmp_path / "in/{00000..00003}.tar"), str(tmp_path / "out")
  real = convert._convert_tar
  calls = []

  def failing(unit, *args):
    calls.append(unit)
    if unit == 2:
      # Leave a half-written shard behind, as a killed process would.
      with open(os.path.join(out, "shard-00002.array_record.tmp"), "wb") as f:
        f.write(b"partial")
      raise KeyboardInterrupt("simulated crash")
    return real(unit, *args)

  monkeypatch.setattr(convert, "_convert_tar", failing)
  with pytest.raises(KeyboardInterrupt):
    convert.convert_webdataset(pattern, out, workers=1, progress=False)
  m = records.read_manifest(out)
  assert not m["complete"] and [s["unit"] for s in m["shards"]] == [0, 1]
  with pytest.raises(ValueError, match="incomplete"):
    records.ImageTextSource(out)

  monkeypatch.setattr(convert, "_convert_tar", real)
  calls.clear()
  mtime = os.path.getmtime(os.path.join(out, "shard-00000.array_record"))
  convert.convert_webdataset(pattern, out, workers=1, progress=False)
  assert os.path.getmtime(os.path.join(out, "shard-00000.array_record")) == mtime
  assert not list((tmp_path / "out").glob("*.tmp"))
  recs = check_output(out, good, bad)

  # A shard lost after its manifest entry was written is redone; nothing else is.
  os.remove(os.path.join(out, "shard-00001.array_record"))
  monkeypatch.setattr(convert, "_convert_tar", failing)
  convert.convert_webdataset(pattern, out, workers=1, progress=False)
  assert calls == [1]
  assert read_all(out) == recs


def test_refuses_other_arguments(tmp_path):
  make_webdataset(str(tmp_path / "in"), num_tars=2, per_tar=2)
  out = str(tmp_path / "out")
  convert.convert_webdataset(str(tmp_path / "in/00000.tar"), out, workers=1, progress=False)
  with pytest.raises(ValueError, match="different arguments"):
    convert.convert_webdataset(str(tmp_path / "in/*.tar"), out, workers=1, progress=False)
