"""Image-caption shards: record encoding, robust image decoding, manifest and source.

A shard directory holds ArrayRecord files (written with `group_size:1` so that
any record can be read on its own) and a `manifest.json`:

  {"format": "cloob_jax.image_text/1",
   "source": {...how the records were made: converter arguments and inputs...},
   "validation": {"max_pixels": ..., "min_side": ..., "max_caption_chars": ...},
   "shards": [{"unit": 0, "input": ..., "file": "shard-00000.array_record",
               "num_records": 123, "skipped": {"corrupt": 2},
               "captions_truncated": 0}, ...],
   "failed": [{"unit": 7, "input": ..., "error": "..."}, ...],
   "num_records": 12345, "skipped": {"corrupt": 17, ...}, "captions_truncated": 1,
   "complete": true}

`shards` are the converted units, the only ones read. `failed` units (inputs that
could not be opened or read to their end) hold no records; the converter retries
them on its next run. `complete` means the converter went through every unit, so
a complete directory with failed units is readable, with the converted ones.
`skipped` counts records left out by reason (`REASONS`, and the converter's
"unsafe_member": tar members it would not read). Manifests written before
`failed` existed may list a shard entry with an "error" instead.

Each record is msgpack `[image_bytes, caption, key]`: the original encoded image
bytes (never re-encoded), the caption as UTF-8 text and a source key (e.g. the
webdataset key or the image path) for tracing a record back to its origin.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from typing import Any, Callable, Iterable, Mapping

import msgpack
import numpy as np
from PIL import Image

from cloob_jax import paths
from cloob_jax.data import transforms

FORMAT = "cloob_jax.image_text/1"
MANIFEST = "manifest.json"
SHARD_SUFFIX = ".array_record"
# group_size:1 makes random access read one record, not a 64k-record chunk;
# JPEG/PNG bytes do not compress further, so skip the codec on both ends.
WRITER_OPTIONS = "group_size:1,uncompressed"

# Why a record was skipped. The order is the column order of the pipeline's
# per-batch `skipped` counters; append new reasons at the end.
REASONS = ("empty", "corrupt", "too_large", "too_small", "bad_caption", "missing")
REASON_INDEX = {r: i for i, r in enumerate(REASONS)}

DEFAULT_MAX_PIXELS = 64_000_000  # ~ 9000x7000; an RGB decode of that is ~190 MB
DEFAULT_MIN_SIDE = 8


class BadRecord(Exception):
  """A record that cannot be used; `reason` is one of `REASONS`."""

  def __init__(self, reason: str, detail: str = ""):
    assert reason in REASON_INDEX, reason
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


# ----------------------------------------------------------------------------
# Record encoding.


def encode_record(image_bytes: bytes, caption: str, key: str) -> bytes:
  """Serialises one record; the inverse of `decode_record`."""
  return msgpack.packb([bytes(image_bytes), caption, key], use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  """Returns {'image_bytes': bytes, 'caption': str, 'key': str}."""
  image_bytes, caption, key = msgpack.unpackb(data, raw=False)
  return {"image_bytes": image_bytes, "caption": caption, "key": key}


def clean_caption(caption: str | bytes | None) -> str:
  """Validates a caption; returns it stripped or raises BadRecord('bad_caption')."""
  if caption is None:
    raise BadRecord("bad_caption", "no caption")
  if isinstance(caption, (bytes, bytearray)):
    try:
      caption = bytes(caption).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRecord("bad_caption", "not UTF-8") from e
  try:
    caption.encode("utf-8")
  except UnicodeEncodeError as e:  # surrogates from undecodable input bytes
    raise BadRecord("bad_caption", "not UTF-8") from e
  caption = caption.replace("\x00", "").strip()
  if not caption:
    raise BadRecord("bad_caption", "empty caption")
  return caption


# ----------------------------------------------------------------------------
# Image decoding.

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(img: Image.Image) -> Image.Image:
  """Any PIL mode to RGB; transparency is composited on white."""
  mode = img.mode
  if mode == "RGB":
    return img
  if mode == "P" and "transparency" in img.info:
    img, mode = img.convert("RGBA"), "RGBA"
  if mode in _ALPHA_MODES:
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
    alpha = rgba[..., 3:]
    # Integer "over" on a white background: c*a + 255*(255-a), rounded.
    rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))
  if mode in _INT16_MODES or mode == "I":
    # PIL's convert clips 16-bit values at 255; rescale the full range instead.
    a = np.asarray(img).astype(np.int64)
    if mode == "I" and a.max(initial=0) <= 255:
      g = np.clip(a, 0, 255)
    else:
      g = np.clip(a, 0, 65535) >> 8
    return Image.fromarray(g.astype(np.uint8), "L").convert("RGB")
  if mode == "F":
    a = np.asarray(img, dtype=np.float32)
    a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(g, "L").convert("RGB")
  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions are right.
  return img.convert("RGB")


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int = DEFAULT_MIN_SIDE) -> Image.Image:
  """Opens (header only) and checks size; raises BadRecord. Nothing is decoded yet."""
  if not data:
    raise BadRecord("empty", "zero bytes")
  try:
    with warnings.catch_warnings():
      # We enforce our own pixel limit below, before any pixel is decoded.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise BadRecord("too_large", str(e)) from e
  except Exception as e:  # PIL raises many types for garbage input.
    raise BadRecord("corrupt", f"{type(e).__name__}: {e}") from e
  _check_size(*img.size, max_pixels=max_pixels, min_side=min_side)
  return img


def _check_size(w: int, h: int, *, max_pixels: int, min_side: int) -> None:
  if w * h > max_pixels:
    raise BadRecord("too_large", f"{w}x{h} > {max_pixels} pixels")
  if min(w, h) < min_side:
    raise BadRecord("too_small", f"{w}x{h}")


def _load_rgb(img: Image.Image, draft: tuple[int, int] | None = None) -> Image.Image:
  """Decodes an opened image to RGB (a JPEG at a `draft` scale); raises BadRecord('corrupt')."""
  try:
    if draft and img.format == "JPEG":
      img.draft("RGB", draft)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data"; pixels are fine
      img.load()
      rgb = _to_rgb(img)
  except Exception as e:  # truncated data, bad Huffman codes, zlib errors, ...
    raise BadRecord("corrupt", f"{type(e).__name__}: {e}") from e
  if rgb.mode != "RGB":
    raise BadRecord("corrupt", f"decoded to mode {rgb.mode}")
  return rgb


def load_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int = DEFAULT_MIN_SIDE,
               draft_size: int | None = None) -> Image.Image:
  """`decode_image`, but returns the RGB PIL image (saves two copies before a resize)."""
  img = open_image(data, max_pixels=max_pixels, min_side=min_side)
  return _load_rgb(img, (draft_size, draft_size) if draft_size else None)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE,
                 draft_size: int | None = None) -> np.ndarray:
  """Decodes encoded image bytes to uint8 RGB [H, W, 3], or raises BadRecord.

  Args:
    data: encoded bytes (JPEG, PNG, WebP, GIF, ...).
    max_pixels: images declaring more pixels are refused before decoding
      ('too_large'), which defuses decompression bombs.
    min_side: images with a side below this are refused ('too_small').
    draft_size: if set, JPEGs are decoded by libjpeg at the smallest 1/2, 1/4 or
      1/8 scale whose both sides are still >= draft_size: much faster when the
      image is much larger than the training resolution.

  Returns:
    uint8 [H, W, 3] (read-only); grayscale, palette, CMYK, 16-bit and alpha
    images are converted (transparency composited on white).
  """
  return np.asarray(load_image(data, max_pixels=max_pixels, min_side=min_side,
                               draft_size=draft_size))


# ----------------------------------------------------------------------------
# Decode, crop and resize in one step (the input pipeline's path).

DECODERS = ("auto", "fast", "pillow")
# "fast": libjpeg-turbo's plain chroma upsampling (each chroma sample repeated, not
# interpolated), through simplejpeg's flag. Not its fast integer IDCT (`fastdct`): on a
# photo-like JPEG that shifted red and blue by -1.2 and -1.3 levels on average.
_FAST_JPEG = {"fastupsample": True}
_codecs: tuple[Any, Any] | None | bool = False  # False: not looked for yet


def fast_codecs():
  """(simplejpeg, cv2) when both are installed, else None: then Pillow does everything."""
  global _codecs
  if _codecs is False:
    try:
      import cv2  # pylint: disable=g-import-not-at-top
      import simplejpeg  # pylint: disable=g-import-not-at-top
    except ImportError:
      _codecs = None
    else:
      cv2.setNumThreads(1)  # the pipeline's threads and workers are the parallelism
      _codecs = simplejpeg, cv2
  return _codecs


def dct_scale(box: tuple[float, float, float, float], size: int) -> int:
  """The largest d in 1, 2, 4, 8 at which a 1/d-scale decode keeps `box` >= size each way."""
  side, d = min(box[2], box[3]), 1
  while d < 8 and side >= 2 * d * size:
    d *= 2
  return d


def _jpeg_header(simplejpeg, data: bytes) -> tuple[int, int] | None:
  """(height, width) of a YCbCr or grayscale JPEG; None for anything else (Pillow's)."""
  if data[:2] != b"\xff\xd8":
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except Exception:  # pylint: disable=broad-except
    return None
  return (height, width) if colorspace in ("YCbCr", "Gray") else None


def _grid_box(box, d: int, height: int, width: int,
              shape: tuple[int, int]) -> tuple[int, int, int, int]:
  """`box` on the pixel grid of a 1/d-scale decode of `shape` (h, w), edges rounded.

  libjpeg's pixel i at scale 1/d covers source pixels [d * i, d * (i + 1)); a
  decode of any other size is mapped by its size ratio instead.
  """
  sh, sw = shape
  sy, sx = (1 / d, 1 / d) if shape == (-(-height // d), -(-width // d)) else (
      sh / height, sw / width)
  top, left, h, w = box
  t = min(int(math.floor(top * sy + 0.5)), sh - 1)
  l = min(int(math.floor(left * sx + 0.5)), sw - 1)
  b = min(max(int(math.floor((top + h) * sy + 0.5)), t + 1), sh)
  r = min(max(int(math.floor((left + w) * sx + 0.5)), l + 1), sw)
  return t, l, b - t, r - l


def _pillow_crop(img: Image.Image, box, size: int, scaled: bool) -> np.ndarray:
  width, height = img.size
  d = dct_scale(box, size) if scaled and img.format == "JPEG" else 1
  rgb = _load_rgb(img, (width // d, height // d) if d > 1 else None)
  top, left, h, w = _grid_box(box, d, height, width, (rgb.height, rgb.width))
  return np.asarray(rgb.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h)))


def decode_crop(data: bytes, size: int,
                box_fn: Callable[[int, int], tuple[float, float, float, float]], *,
                decoder: str = "auto", scaled: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
  """Decodes an image and resizes one box of it to uint8 [size, size, 3], or raises BadRecord.

  Args:
    data: encoded bytes.
    size: the output side.
    box_fn: (height, width) -> (top, left, box_height, box_width), e.g. a random
      crop. Called once, with the size in the image's header, before any pixel is
      decoded: the box is the same whichever decoder runs.
    decoder: "auto": YCbCr and grayscale JPEGs are decoded by simplejpeg and resized
      by OpenCV (`transforms.resize_box_fast`) when both are installed; any other
      image, and any JPEG that simplejpeg fails on, goes to Pillow (bicubic).
      "fast": as "auto", with libjpeg-turbo's plain chroma upsampling (faster, slightly
      less exact, no colour shift: tests/records_test.py bounds the difference).
      "pillow": Pillow for everything.
    scaled: decode JPEGs at the smallest 1/2, 1/4 or 1/8 DCT scale at which the
      box still spans >= `size` pixels each way (`dct_scale`).
    max_pixels, min_side: as for `decode_image`.

  Returns:
    uint8 [size, size, 3]. On a JPEG the two decoders differ by about 0.5 in mean
    absolute value (tests/records_test.py); the box is the same.
  """
  if decoder not in DECODERS:
    raise ValueError(f"decoder {decoder!r} not in {DECODERS}")
  if not data:
    raise BadRecord("empty", "zero bytes")
  codecs = fast_codecs() if decoder != "pillow" else None
  header = _jpeg_header(codecs[0], data) if codecs else None
  if header is None:
    img = open_image(data, max_pixels=max_pixels, min_side=min_side)
    return _pillow_crop(img, box_fn(img.height, img.width), size, scaled)
  height, width = header
  _check_size(width, height, max_pixels=max_pixels, min_side=min_side)
  box = box_fn(height, width)
  d = dct_scale(box, size) if scaled else 1
  simplejpeg, _ = codecs
  try:  # strict: truncated data and the like raise, as in Pillow
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height // d,
                                 min_width=width // d, strict=True,
                                 **(_FAST_JPEG if decoder == "fast" else {}))
  except Exception:  # pylint: disable=broad-except
    img = open_image(data, max_pixels=max_pixels, min_side=min_side)
    if img.size != (width, height):
      raise BadRecord("corrupt", f"header sizes disagree: {img.size} {(width, height)}")
    return _pillow_crop(img, box, size, scaled)
  return transforms.resize_box_fast(rgb, _grid_box(box, d, height, width, rgb.shape[:2]), size)


# ----------------------------------------------------------------------------
# Manifest.


def manifest_path(directory: str) -> str:
  return paths.join(directory, MANIFEST)


def read_manifest(directory: str) -> dict[str, Any] | None:
  """The manifest of a shard directory (local or gs://), or None if it has none."""
  path = manifest_path(directory)
  if not paths.exists(path):
    return None
  return json.loads(paths.read_text(path))


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
  """Writes the manifest atomically (a reader never sees half a file)."""
  paths.write_text(manifest_path(directory), json.dumps(manifest, indent=1) + "\n")


def check_data_dir(data_dir: str, cache_dir: str | None = None) -> str:
  """Refuses a data_dir that cannot be trained from (see local_data_dir), reading only its
  manifest: a missing folder, no manifest, another format, an unfinished conversion, no
  records. The trainer calls it before it writes anything into its workdir."""
  data_dir = paths.check(data_dir, "config.data.data_dir")
  if paths.is_remote(data_dir) and not cache_dir:
    raise paths.PathError(
        f"config.data.data_dir={data_dir!r}: ArrayRecord shards are read from a local disk "
        "only; set config.data.cache_dir=/local/dir to copy them there first, or mount the "
        "bucket (gcsfuse) and give the mount's path")
  if paths.is_remote(data_dir):
    paths.check_bucket(data_dir)
  where = f"config.data.data_dir={data_dir!r}"
  convert = ("write it with `python -m cloob_jax.data.convert {csv,webdataset} INPUT "
             f"{data_dir}` (README: Train on your own data)")
  if not paths.exists(data_dir):
    raise paths.PathError(f"{where} does not exist: {convert}")
  try:
    manifest = read_manifest(data_dir)
  except ValueError as e:  # not JSON
    raise paths.PathError(f"{where}: {MANIFEST} is not valid JSON ({e})") from None
  if manifest is None:
    raise paths.PathError(f"{where} has no {MANIFEST}, so it holds no converted shards: "
                          f"{convert}")
  if manifest.get("format") != FORMAT:
    raise paths.PathError(f"{where}: {MANIFEST} has the format {manifest.get('format')!r}, "
                          f"not {FORMAT!r}: {convert}")
  if not manifest.get("complete", False):
    raise paths.PathError(f"{where}: the conversion into it did not finish; re-run the same "
                          "`python -m cloob_jax.data.convert` command to complete it")
  if not manifest.get("num_records"):
    raise paths.PathError(f"{where} holds no records (its conversion kept none; see "
                          f"'failed' and 'skipped' in {manifest_path(data_dir)})")
  return data_dir


def local_data_dir(data_dir: str, cache_dir: str | None = None) -> str:
  """The local folder to read `data_dir`'s shards from.

  ArrayRecord reads local files only (google/array_record#120), so a gs:// data_dir is
  copied into `cache_dir` first (files already there with the same size are kept), or
  refused with a line that says what to do. A local path, or a gcsfuse mount of the bucket,
  is read in place.
  """
  data_dir = check_data_dir(data_dir, cache_dir)
  if not paths.is_remote(data_dir):
    return data_dir
  if read_manifest(data_dir) is None:
    raise paths.PathError(f"config.data.data_dir={data_dir!r} has no {MANIFEST} (write it "
                          "with python -m cloob_jax.data.convert)")
  return paths.local_copy(data_dir, cache_dir, "config.data.data_dir")


def sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
  """Adds per-reason counters, keeping `REASONS` order."""
  total: dict[str, int] = {}
  for c in counts:
    for k, v in c.items():
      total[k] = total.get(k, 0) + int(v)
  order = {r: i for i, r in enumerate(REASONS)}
  return dict(sorted(total.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))


# ----------------------------------------------------------------------------
# Writing and reading shards.


class ShardWriter:
  """Writes records to `path` via `path.tmp`; `close()` renames it into place."""

  def __init__(self, path: str):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self.path = path
    self._tmp = path + ".tmp"
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
    self.num_records = 0

  def write(self, image_bytes: bytes, caption: str, key: str) -> None:
    self._writer.write(encode_record(image_bytes, caption, key))
    self.num_records += 1

  def close(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)  # a shard exists only when complete

  def abort(self) -> None:
    self._writer.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)


def read_shard(path: str) -> list[dict[str, Any]]:
  """All records of one shard file, in order (for tests and inspection)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(path)
  try:
    n = reader.num_records()
    return [decode_record(r) for r in reader.read(0, n)] if n else []
  finally:
    reader.close()


class ImageTextSource:
  """Random-access source over a shard directory (grain-compatible, picklable).

  `source[i]` -> {'image_bytes': bytes, 'caption': str, 'key': str}. Record
  order is the manifest's shard order, then the order within each shard.
  """

  def __init__(self, directory: str, *, allow_incomplete: bool = False):
    self.directory = os.fspath(directory)
    if paths.is_remote(self.directory):
      raise paths.PathError(f"{self.directory}: ArrayRecord shards are read from a local disk "
                            "only (records.local_data_dir copies a gs:// folder)")
    manifest = read_manifest(self.directory)
    if manifest is None:
      raise FileNotFoundError(f"no {MANIFEST} in {self.directory}")
    if manifest.get("format") != FORMAT:
      raise ValueError(f"{self.directory}: unknown format {manifest.get('format')!r}")
    if not manifest.get("complete", False) and not allow_incomplete:
      raise ValueError(f"{self.directory}: conversion incomplete; re-run the "
                       "converter to finish it (or pass allow_incomplete=True)")
    self.manifest = manifest
    # "path[0:n]" tells grain the record count, so no shard is opened here.
    self._paths = [
        f"{os.path.join(self.directory, s['file'])}[0:{s['num_records']}]"
        for s in manifest["shards"] if s["num_records"] > 0]
    self._len = sum(s["num_records"] for s in manifest["shards"])
    self._ds = None

  def _records(self):
    if self._ds is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._ds = grain.sources.ArrayRecordDataSource(self._paths)
    return self._ds

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index) -> dict[str, Any]:
    return decode_record(self._records()[int(index)])

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [decode_record(r) for r in self._records().__getitems__(indices)]

  def __getstate__(self):
    # Readers hold open files; workers reopen lazily.
    state = self.__dict__.copy()
    state["_ds"] = None
    return state

  def __repr__(self) -> str:
    return f"ImageTextSource({self.directory!r}, num_records={self._len})"
