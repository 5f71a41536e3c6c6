"""Tests for cloob_jax.data.records: record encoding, decode_image, shards + source."""

import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cloob_jax.data import records


def encode(image, fmt, **kw) -> bytes:
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  buf = io.BytesIO()
  image.save(buf, fmt, **kw)
  return buf.getvalue()


def png_bytes(width, height, *, bit_depth=8, colour_type=2, raw=b"") -> bytes:
  """A hand-made PNG: any declared size, any pixel data (for bombs and 16-bit RGB)."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
          + chunk(b"IEND", b""))


def smooth_rgb(h=24, w=32, seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 128.0)], -1)
  return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def bad_reason(data, **kw):
  with pytest.raises(records.BadRecord) as e:
    records.decode_image(data, **kw)
  return e.value.reason


# ---------------------------------------------------------------------------
# Records.


def test_record_round_trip():
  data = bytes(range(256)) * 3
  rec = records.decode_record(records.encode_record(data, "a cat ☃", "k/001"))
  assert rec == {"image_bytes": data, "caption": "a cat ☃", "key": "k/001"}


def test_clean_caption():
  assert records.clean_caption("  a dog \n") == "a dog"
  assert records.clean_caption("ein Hund ü".encode()) == "ein Hund ü"
  for bad in [b"\xff\xfe bad", "   \t\n", "", None, b"caf\xe9",
              b"caf\xe9".decode("utf-8", "surrogateescape")]:
    with pytest.raises(records.BadRecord) as e:
      records.clean_caption(bad)
    assert e.value.reason == "bad_caption"


# ---------------------------------------------------------------------------
# decode_image: good and odd inputs.


def test_decode_rgb_png_exact():
  img = smooth_rgb()
  np.testing.assert_array_equal(records.decode_image(encode(img, "PNG")), img)


def test_decode_jpeg_and_webp():
  img = smooth_rgb()
  for fmt in ("JPEG", "WEBP"):
    out = records.decode_image(encode(img, fmt, quality=95))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 4


def test_decode_grayscale():
  g = smooth_rgb()[..., 0]
  out = records.decode_image(encode(Image.fromarray(g, "L"), "PNG"))
  assert out.shape == g.shape + (3,)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], g)


def test_decode_palette_and_transparency():
  img = smooth_rgb()
  pal = Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  expected = np.asarray(pal.convert("RGB"))
  np.testing.assert_array_equal(records.decode_image(encode(pal, "PNG")), expected)
  index = pal.getpixel((0, 0))  # make that palette entry transparent
  out = records.decode_image(encode(pal, "PNG", transparency=index))
  transparent = np.asarray(pal) == index
  assert transparent.any() and (~transparent).any()
  assert (out[transparent] == 255).all()
  np.testing.assert_array_equal(out[~transparent], expected[~transparent])


def test_decode_rgba_composites_on_white():
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., 0] = 255                       # red ...
  rgba[:, :8, 3] = 255                     # opaque on the left
  rgba[:, 8:, 3] = 0                       # transparent on the right (white)
  rgba[0, 0, 3] = 128                      # one half-transparent pixel
  out = records.decode_image(encode(rgba, "PNG"))
  np.testing.assert_array_equal(out[1, 1], [255, 0, 0])
  np.testing.assert_array_equal(out[1, 12], [255, 255, 255])
  np.testing.assert_array_equal(out[0, 0], [255, 127, 127])


def test_decode_la():
  la = np.zeros((16, 16, 2), np.uint8)
  la[..., 0] = 40
  la[:8, :, 1] = 255
  out = records.decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
  np.testing.assert_array_equal(out[0, 0], [40, 40, 40])
  np.testing.assert_array_equal(out[12, 0], [255, 255, 255])


def test_decode_cmyk_jpeg():
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[...] = (200, 60, 30)
  cmyk = Image.fromarray(rgb).convert("CMYK")
  data = encode(cmyk, "JPEG", quality=98)
  assert Image.open(io.BytesIO(data)).mode == "CMYK"
  out = records.decode_image(data)
  assert out.shape == (16, 16, 3)
  assert np.abs(out.astype(int) - rgb).max() <= 6


def test_decode_16bit_gray_png_rescales():
  g = np.zeros((16, 16), np.uint16)
  g[0] = 65535
  g[1] = 0x8000
  g[2] = 0x00FF  # 255/65535 of full scale: dark, not white
  data = encode(Image.fromarray(g), "PNG")
  assert Image.open(io.BytesIO(data)).mode.startswith("I")
  out = records.decode_image(data)
  assert out[0, 0].tolist() == [255] * 3
  assert out[1, 0].tolist() == [128] * 3
  assert out[2, 0].tolist() == [0] * 3


def test_decode_16bit_rgb_png():
  px = np.zeros((10, 12, 3), np.uint16)
  px[...] = (0xABCD, 0x1234, 0xFF00)
  raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in px)
  out = records.decode_image(png_bytes(12, 10, bit_depth=16, colour_type=2, raw=raw))
  assert out.shape == (10, 12, 3)
  assert out[0, 0].tolist() == [0xAB, 0x12, 0xFF]


def test_decode_draft_downscales_large_jpeg():
  big = np.kron(smooth_rgb(30, 40), np.ones((20, 20, 1), np.uint8))  # 600 x 800
  data = encode(big, "JPEG", quality=90)
  out = records.decode_image(data, draft_size=64)
  assert out.shape == (75, 100, 3)  # 1/8 scale, both sides still >= 64
  assert records.decode_image(data, draft_size=200).shape == (300, 400, 3)
  assert records.decode_image(data).shape == (600, 800, 3)


# ---------------------------------------------------------------------------
# decode_image: bad inputs and their reasons.


def test_bad_empty():
  assert bad_reason(b"") == "empty"


def test_bad_random_bytes():
  assert bad_reason(np.random.default_rng(0).bytes(300)) == "corrupt"


def test_bad_truncated_jpeg():
  data = encode(smooth_rgb(64, 64), "JPEG")
  assert bad_reason(data[: len(data) // 2]) == "corrupt"
  assert bad_reason(data[: len(data) // 2], draft_size=8) == "corrupt"
  assert bad_reason(data[:20]) == "corrupt"  # header cut short


def test_bad_truncated_png():
  data = encode(smooth_rgb(), "PNG")
  assert bad_reason(data[:-30]) == "corrupt"


def test_bad_corrupt_png_data():
  # Valid header, IDAT that is not zlib data.
  data = png_bytes(16, 16, raw=b"")
  broken = data.replace(zlib.compress(b""), b"\x00garbage!")
  assert bad_reason(broken) == "corrupt"


def test_bad_decompression_bomb():
  # Declared 100000 x 100000: refused from the header, nothing is decoded.
  assert bad_reason(png_bytes(100_000, 100_000)) == "too_large"
  # Below PIL's own limit but above ours.
  assert bad_reason(png_bytes(5000, 5000), max_pixels=1_000_000) == "too_large"


def test_bad_too_small():
  assert bad_reason(encode(smooth_rgb(4, 32), "PNG")) == "too_small"
  assert records.decode_image(encode(smooth_rgb(4, 32), "PNG"), min_side=4).shape == (4, 32, 3)


# ---------------------------------------------------------------------------
# Shards and the random-access source.


def write_dir(directory, shards, complete=True):
  """Writes shards [[(bytes, caption, key), ...], ...] and a manifest."""
  entries = []
  for u, recs in enumerate(shards):
    name = f"shard-{u:05d}{records.SHARD_SUFFIX}"
    w = records.ShardWriter(os.path.join(directory, name))
    for r in recs:
      w.write(*r)
    w.close()
    entries.append({"unit": u, "file": name, "num_records": len(recs), "skipped": {}})
  records.write_manifest(directory, {
      "format": records.FORMAT, "source": {"kind": "test"}, "shards": entries,
      "num_records": sum(len(s) for s in shards), "skipped": {}, "complete": complete})


def test_shards_round_trip(tmp_path):
  recs = [(encode(smooth_rgb(seed=i), "PNG"), f"caption {i}", f"k{i}") for i in range(7)]
  write_dir(str(tmp_path), [recs[:3], [], recs[3:]])
  assert not list(tmp_path.glob("*.tmp"))
  assert records.read_shard(str(tmp_path / "shard-00000.array_record"))[1]["key"] == "k1"
  src = records.ImageTextSource(str(tmp_path))
  assert len(src) == 7
  for i in [0, 2, 3, 6, 4]:
    assert src[i] == {"image_bytes": recs[i][0], "caption": recs[i][1], "key": recs[i][2]}
  src2 = pickle.loads(pickle.dumps(src))
  assert src2[5]["key"] == "k5"
  assert [r["key"] for r in src2.__getitems__([6, 0])] == ["k6", "k0"]


def test_source_refuses_incomplete(tmp_path):
  write_dir(str(tmp_path), [[(b"x", "c", "k")]], complete=False)
  with pytest.raises(ValueError, match="incomplete"):
    records.ImageTextSource(str(tmp_path))
  assert len(records.ImageTextSource(str(tmp_path), allow_incomplete=True)) == 1
  with pytest.raises(FileNotFoundError):
    records.ImageTextSource(str(tmp_path / "nowhere"))


def test_sum_counts_order():
  assert list(records.sum_counts([{"missing": 1, "corrupt": 2}, {"empty": 1, "corrupt": 1}])
              .items()) == [("empty", 1), ("corrupt", 3), ("missing", 1)]


# ---------------------------------------------------------------------------
# decode_crop: the fast path (simplejpeg + OpenCV) against Pillow.


def photo_jpeg(width, height, seed=0, **kw) -> bytes:
  from cloob_jax.bench.data import natural_image
  return encode(natural_image(np.random.default_rng(seed), width, height), "JPEG",
                **dict(dict(quality=90), **kw))


def random_box_fn(seed, calls=None):
  """A random crop as the train pipeline draws it; `calls` collects the sizes it saw."""
  from cloob_jax.data import transforms
  rng = np.random.default_rng(seed)

  def box_fn(h, w):
    if calls is not None:
      calls.append((h, w))
    return transforms.random_resized_crop_box(h, w, rng)
  return box_fn


def both(data, size, seed=0, decoder="auto", **kw):
  """(`decoder`'s, pillow's) outputs for the same random crop, and the sizes box_fn saw."""
  calls = []
  fast = records.decode_crop(data, size, random_box_fn(seed, calls), decoder=decoder, **kw)
  slow = records.decode_crop(data, size, random_box_fn(seed, calls), decoder="pillow", **kw)
  return fast, slow, calls


needs_fast = pytest.mark.skipif(records.fast_codecs() is None,
                                reason="simplejpeg or opencv-python-headless not installed")


def test_dct_scale():
  assert records.dct_scale((0, 0, 447, 600), 224) == 1
  assert records.dct_scale((0, 0, 448, 600), 224) == 2
  assert records.dct_scale((0, 0, 900, 1000), 224) == 4
  assert records.dct_scale((0, 0, 9000, 9000), 224) == 8


def test_decode_crop_pillow_reproduces_the_old_path():
  from cloob_jax.data import transforms
  data = photo_jpeg(200, 150)
  want = transforms.random_resized_crop(records.load_image(data), 64, np.random.default_rng(3))
  got = records.decode_crop(data, 64, random_box_fn(3), decoder="pillow", scaled=False)
  np.testing.assert_array_equal(got, want)


@needs_fast
@pytest.mark.parametrize("decoder", ["auto", "fast"])
@pytest.mark.parametrize("width,height,size,kw", [
    (500, 375, 224, {}),                      # CC3M-like, full-scale decode
    (800, 600, 224, {"progressive": True}),   # 1/2-scale decode
    (640, 480, 96, {"subsampling": 0}),       # 1/2 or 1/4, 4:4:4 chroma
])
def test_decode_crop_fast_close_to_pillow(width, height, size, kw, decoder):
  data = photo_jpeg(width, height, **kw)
  for seed in range(3):
    fast, slow, calls = both(data, size, seed, decoder)
    assert fast.shape == slow.shape == (size, size, 3) and fast.dtype == np.uint8
    assert calls == [(height, width)] * 2  # one box, from the header, for either decoder
    diff = fast.astype(int) - slow
    assert np.abs(diff).mean() < 1.0, np.abs(diff).mean()   # measured 0.37 .. 0.65 either way
    assert np.abs(diff.mean(axis=(0, 1))).max() < 0.5       # no colour shift
    assert np.percentile(np.abs(diff), 99) <= 8


@needs_fast
def test_decode_crop_same_geometry():
  # A black square on white: its centroid lands on the same output pixel either way.
  img = np.full((300, 400, 3), 255, np.uint8)
  img[90:150, 230:290] = 0
  data = encode(img, "JPEG", quality=95)
  for seed in range(4):
    for scaled in (True, False):
      outs = both(data, 32, seed, scaled=scaled)[:2]
      centroids = []
      for out in outs:
        dark = 255.0 - out.mean(axis=-1)
        y, x = np.mgrid[:32, :32]
        centroids.append((np.sum(dark * y) / dark.sum(), np.sum(dark * x) / dark.sum()))
      np.testing.assert_allclose(centroids[0], centroids[1], atol=0.15)


@needs_fast
def test_decode_crop_fast_deterministic_and_grayscale():
  data = photo_jpeg(320, 240, seed=1)
  a = records.decode_crop(data, 48, random_box_fn(5))
  np.testing.assert_array_equal(a, records.decode_crop(data, 48, random_box_fn(5)))
  assert not np.array_equal(a, records.decode_crop(data, 48, random_box_fn(6)))
  gray = encode(Image.open(io.BytesIO(data)).convert("L"), "JPEG", quality=90)
  fast, slow, _ = both(gray, 48)
  assert (fast == fast[..., :1]).all()
  assert np.abs(fast.astype(int) - slow).mean() < 1.0


@needs_fast
def test_decode_crop_fallbacks_to_pillow(monkeypatch):
  # CMYK JPEGs, PNGs and JPEGs simplejpeg fails on go through Pillow: exactly its pixels.
  cmyk = encode(Image.fromarray(smooth_rgb(40, 50)).convert("CMYK"), "JPEG", quality=95)
  for data in (cmyk, encode(smooth_rgb(40, 50), "PNG")):
    fast, slow, calls = both(data, 16)
    np.testing.assert_array_equal(fast, slow)
    assert calls == [(40, 50)] * 2
  data = photo_jpeg(120, 90)
  simplejpeg, _ = records.fast_codecs()

  def broken(*args, **kwargs):
    raise ValueError("simplejpeg refuses")
  monkeypatch.setattr(simplejpeg, "decode_jpeg", broken)
  fast, slow, calls = both(data, 16)
  np.testing.assert_array_equal(fast, slow)
  assert calls == [(90, 120)] * 2  # the box drawn before the failure is the one used
  monkeypatch.setattr(records, "_codecs", None)  # neither library installed
  fast, slow, _ = both(data, 16)
  np.testing.assert_array_equal(fast, slow)


def test_decode_crop_bad_records_as_pillow():
  data = photo_jpeg(120, 90)
  cases = {
      "empty": (b"", {}),
      "corrupt": (data[: len(data) // 2], {}),                   # truncated scan
      "too_small": (encode(smooth_rgb(6, 40), "JPEG"), {}),
      "too_large": (data, {"max_pixels": 5000}),
  }
  cases["corrupt header"] = (b"\xff\xd8 not a jpeg", {})
  for want, (bad, kw) in cases.items():
    for decoder in records.DECODERS:
      with pytest.raises(records.BadRecord) as e:
        records.decode_crop(bad, 16, random_box_fn(0), decoder=decoder, **kw)
      assert e.value.reason == want.split()[0], (want, decoder)
  with pytest.raises(ValueError, match="decoder"):
    records.decode_crop(data, 16, random_box_fn(0), decoder="turbo")
