"""Tests for cloob_jax.data.convert: webdataset and CSV converters, resumption."""

import collections
import errno
import io
import os
import stat
import subprocess
import sys
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


def run_cli(*args):
  """Runs the converter's command line in a fresh process; returns (exit status, stdout)."""
  p = subprocess.run([sys.executable, "-m", "cloob_jax.data.convert", *args,
                      "--workers=1", "--no-progress"], capture_output=True, text=True,
                     check=False, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert "Traceback" not in p.stderr, p.stderr
  return p.returncode, p.stdout


def test_webdataset_broken_inputs_are_retried(tmp_path):
  good, bad = make_webdataset(str(tmp_path / "in"), num_tars=3)
  pattern, out = str(tmp_path / "in/{00000..00002}.tar"), str(tmp_path / "out")
  tars = {t: (tmp_path / f"in/{t:05d}.tar").read_bytes() for t in (1, 2)}
  # A truncated tar and a missing one (img2dataset leaves gaps).
  (tmp_path / "in/00001.tar").write_bytes(tars[1][:len(tars[1]) // 2])
  (tmp_path / "in/00002.tar").unlink()
  rc, stdout = run_cli("webdataset", pattern, out)
  assert rc == 1
  m = records.read_manifest(out)
  assert m["complete"] and [s["unit"] for s in m["shards"]] == [0]
  assert [(f["unit"], f["input"]) for f in m["failed"]] == [
      (t, str(tmp_path / f"in/{t:05d}.tar")) for t in (1, 2)]
  assert "ReadError" in m["failed"][0]["error"]
  assert "cannot open" in m["failed"][1]["error"]
  assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.array_record"]
  lines = stdout.splitlines()
  assert "1 units converted, 2 failed (retried on the next run)" in lines[0]
  assert lines[1:] == [f"failed: {f['input']}: {f['error']}" for f in m["failed"]]
  # Readable for training, with the converted unit's records only.
  assert {r["key"] for r in read_all(out)} == {k for k in good if k.startswith("000")}

  for t, data in tars.items():
    (tmp_path / f"in/{t:05d}.tar").write_bytes(data)
  rc, stdout = run_cli("webdataset", pattern, out)
  assert rc == 0 and "3 units converted, 0 failed;" in stdout
  assert records.read_manifest(out)["failed"] == []
  check_output(out, good, bad)


class FailingAfter(io.BytesIO):
  """A file whose reads fail with EIO once `limit` bytes have been read."""

  def __init__(self, data, limit):
    super().__init__(data)
    self.limit = limit

  def read(self, n=-1):
    left = self.limit - self.tell()
    if left <= 0:
      raise OSError(errno.EIO, "Input/output error")
    return super().read(left if n is None or n < 0 else min(n, left))


def test_transient_read_errors_are_retried(tmp_path, monkeypatch, capsys):
  good, bad = make_webdataset(str(tmp_path / "in"), num_tars=3)
  pattern, out = str(tmp_path / "in/{00000..00002}.tar"), str(tmp_path / "out")
  argv = ["webdataset", pattern, out, "--workers=1", "--no-progress"]
  real_open = tarfile.open

  def flaky_open(name=None, mode="r", fileobj=None, **kw):
    if str(name).endswith("00001.tar"):  # fails halfway through the tar
      data = open(name, "rb").read()
      return real_open(fileobj=FailingAfter(data, len(data) // 2), mode=mode)
    if str(name).endswith("00002.tar"):  # cannot be opened
      raise PermissionError(errno.EACCES, "Permission denied", name)
    return real_open(name, mode, fileobj, **kw)

  monkeypatch.setattr(tarfile, "open", flaky_open)
  m = convert.main(argv)
  assert m["complete"] and [s["unit"] for s in m["shards"]] == [0]
  assert [f["unit"] for f in m["failed"]] == [1, 2]
  assert "OSError: [Errno 5] Input/output error" in m["failed"][0]["error"]
  assert "cannot open" in m["failed"][1]["error"]
  assert "PermissionError" in m["failed"][1]["error"]
  assert records.read_manifest(out) == m
  assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.array_record"]
  lines = capsys.readouterr().out.splitlines()
  assert "1 units converted, 2 failed (retried on the next run)" in lines[0]
  assert [l.split(":")[0:2] for l in lines[1:]] == [
      ["failed", f" {tmp_path}/in/{t:05d}.tar"] for t in (1, 2)]
  assert {r["key"] for r in read_all(out)} == {k for k in good if k.startswith("000")}

  # The next run, where the reads work, converts the failed units only.
  monkeypatch.setattr(tarfile, "open", real_open)
  real_convert, calls = convert._convert_tar, []
  monkeypatch.setattr(convert, "_convert_tar",
                      lambda unit, *a: calls.append(unit) or real_convert(unit, *a))
  m = convert.main(argv)
  assert calls == [1, 2] and m["failed"] == []
  assert "3 units converted, 0 failed;" in capsys.readouterr().out
  check_output(out, good, bad)


def test_csv_unreadable_image_is_retried(tmp_path, monkeypatch):
  path, img_dir, good, bad = make_csv(str(tmp_path))
  out = str(tmp_path / "out")
  real_read = convert.paths.read_bytes

  def failing_read(p):
    if p.endswith("sub/005.jpg"):
      raise OSError(errno.EIO, "Input/output error")
    return real_read(p)

  monkeypatch.setattr(convert.paths, "read_bytes", failing_read)
  m = convert.convert_csv(path, out, image_root=img_dir, rows_per_shard=4, workers=1,
                          progress=False)
  assert [f["unit"] for f in m["failed"]] == [2]
  assert m["failed"][0]["input"] == "rows 8..11"
  assert "sub/005.jpg: OSError" in m["failed"][0]["error"]
  assert "005.jpg" not in {r["key"].split("/")[-1] for r in read_all(out)}
  monkeypatch.setattr(convert.paths, "read_bytes", real_read)
  m = convert.convert_csv(path, out, image_root=img_dir, rows_per_shard=4, workers=1,
                          progress=False)
  assert m["failed"] == [] and len(m["shards"]) == 5
  check_output(out, good, bad)


def test_old_manifest_error_entries_are_retried(tmp_path):
  """A manifest from before `failed`: an input with an "error" was recorded as done."""
  good, bad = make_webdataset(str(tmp_path / "in"), num_tars=2)
  pattern, out = str(tmp_path / "in/*.tar"), str(tmp_path / "out")
  convert.convert_webdataset(pattern, out, max_caption_chars=0, workers=1, progress=False)
  m = records.read_manifest(out)
  del m["failed"], m["captions_truncated"], m["validation"]["max_caption_chars"]
  m["shards"][1] = {"unit": 1, "input": m["shards"][1]["input"], "num_records": 0,
                    "file": "shard-00001.array_record", "skipped": {}, "error": "cannot open"}
  os.remove(os.path.join(out, "shard-00001.array_record"))
  records.write_manifest(out, m)
  # Written without a caption limit: resumed with none, refused with one.
  with pytest.raises(ValueError, match="different arguments"):
    convert.convert_webdataset(pattern, out, workers=1, progress=False)
  m = convert.convert_webdataset(pattern, out, max_caption_chars=0, workers=1,
                                 progress=False)
  assert [s["unit"] for s in m["shards"]] == [0, 1] and m["failed"] == []
  check_output(out, good, bad)


def snapshot(root, skip):
  """{relative path: (kind, size, mtime_ns)} of everything under root but `skip`."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
    for name in dirnames + filenames:
      p = os.path.join(dirpath, name)
      st = os.lstat(p)
      found[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
  return found


def test_hostile_tar_members_are_skipped(tmp_path):
  good_a, good_b = image_bytes(10), image_bytes(11)
  (tmp_path / "secret.txt").write_text("secret")
  box, out = tmp_path / "box", tmp_path / "box/out"
  out.mkdir(parents=True)  # made first, so that box's mtime shows any other entry
  (box / "keep.txt").write_text("keep")

  def regular(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)

  def special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind == tarfile.CHRTYPE:
      info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, None

  hostile = [
      regular("../evil.jpg", good_a), regular("../evil.txt", b"escaped"),
      regular("../../box/pwned.txt", b"escaped"),
      regular("/abs/x.jpg", good_a), regular("/abs/x.txt", b"absolute"),
      regular("sub/../../up.txt", b"up"), special("../updir", tarfile.DIRTYPE),
      special("link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
      special("rel.jpg", tarfile.SYMTYPE, "../secret.txt"),
      special("hard.jpg", tarfile.LNKTYPE, "a.jpg"),
      special("dev.jpg", tarfile.CHRTYPE), special("pipe.jpg", tarfile.FIFOTYPE),
  ]
  members = ([regular("a.jpg", good_a), regular("a.txt", b"caption a"),
              special("sub", tarfile.DIRTYPE)]  # a plain folder: not counted
             + hostile[:7] + [hostile[7], regular("link.txt", b"link caption"),
                              hostile[8], regular("rel.txt", b"rel caption"),
                              hostile[9], regular("hard.txt", b"hard caption")]
             + hostile[10:] + [regular("b.jpg", good_b), regular("b.txt", b"caption b")])
  os.makedirs(tmp_path / "in")
  with tarfile.open(tmp_path / "in/00000.tar", "w") as tar:
    for info, data in members:
      tar.addfile(info, data)

  before = snapshot(str(tmp_path), str(out))
  passwd = os.stat("/etc/passwd")
  m = convert.convert_webdataset(str(tmp_path / "in/00000.tar"), str(out), workers=1,
                                 progress=False)
  assert snapshot(str(tmp_path), str(out)) == before
  assert os.stat("/etc/passwd").st_mtime_ns == passwd.st_mtime_ns
  assert not os.path.exists("/abs/x.txt")
  assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.array_record"]
  # Each hostile member is counted; the samples left without their image are "missing".
  assert m["skipped"] == {"missing": 3, convert.UNSAFE_MEMBER: len(hostile)}
  assert m["failed"] == [] and m["num_records"] == 2
  recs = read_all(str(out))
  assert [(r["key"], r["image_bytes"], r["caption"]) for r in recs] == [
      ("a", good_a, "caption a"), ("b", good_b, "caption b")]


def test_long_captions_are_truncated_and_counted(tmp_path, capsys):
  captions = {"short": "a short one", "exact": "x" * 100, "long": "word " * 100,
              "wide": "\u00e9" * 150, "huge": "y" * 5000}
  write_tar(tmp_path / "in.tar", [(k, {"jpg": image_bytes(i), "txt": c.encode()})
                                  for i, (k, c) in enumerate(captions.items())])
  out = str(tmp_path / "out")
  m = convert.main(["webdataset", str(tmp_path / "in.tar"), out, "--max-caption-chars=100",
                    "--workers=1", "--no-progress"])
  got = {r["key"]: r["caption"] for r in read_all(out)}
  # The first 100 characters (not bytes), trailing whitespace stripped.
  assert got == {"short": "a short one", "exact": "x" * 100,
                 "long": ("word " * 20).rstrip(), "wide": "\u00e9" * 100, "huge": "y" * 100}
  assert m["captions_truncated"] == m["shards"][0]["captions_truncated"] == 3
  assert m["skipped"] == {} and m["validation"]["max_caption_chars"] == 100
  assert "3 captions truncated to 100 characters" in capsys.readouterr().out
  with pytest.raises(ValueError, match="different arguments"):
    convert.convert_webdataset(str(tmp_path / "in.tar"), out, workers=1, progress=False)

  m = convert.convert_webdataset(str(tmp_path / "in.tar"), str(tmp_path / "default"),
                                 workers=1, progress=False)
  assert convert.DEFAULT_MAX_CAPTION_CHARS == 4096 and m["captions_truncated"] == 1
  assert {r["key"]: r["caption"] for r in read_all(str(tmp_path / "default"))}["huge"] == \
      "y" * 4096
  m = convert.convert_webdataset(str(tmp_path / "in.tar"), str(tmp_path / "unlimited"),
                                 max_caption_chars=0, workers=1, progress=False)
  assert m["captions_truncated"] == 0
  assert {r["key"]: r["caption"] for r in read_all(str(tmp_path / "unlimited"))} == {
      k: c.strip() for k, c in captions.items()}


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
