r"""Converts image-caption data to ArrayRecord shards (see records.py for the format).

  python -m cloob_jax.data.convert webdataset 'IN/{00000..00099}.tar' OUT_DIR
  python -m cloob_jax.data.convert csv CAPTIONS.tsv OUT_DIR --image-root=DIR \
      [--image-column=filepath --caption-column=title --separator=TAB]

Every image is checked with `records.decode_image` and every caption with
`records.clean_caption`; the original image bytes are stored, never re-encoded.
Bad samples are skipped and counted by reason in the manifest. A caption longer
than --max-caption-chars characters (default 4096; 0: no limit) keeps its first
that many, trailing whitespace stripped, and is counted in `captions_truncated`
(CLIP's tokenizer reads 77 tokens, so this loses nothing a model sees).

Tar members are only ever read, never extracted. A member that is a link, a
device or another special file, or whose name is absolute or has a `..` part,
is not read at all and is counted as skipped under "unsafe_member".

Work is split into units (one input tar, or one chunk of CSV rows), each written
to its own shard `shard-NNNNN.array_record` via a temporary name and renamed when
complete; the manifest lists converted units under "shards" and is rewritten
after each one. A unit whose input cannot be opened or read to its end (a
missing or truncated tar, an I/O error, an image file that exists but cannot be
read) keeps no records: it is listed under "failed" with the error and retried
by the next run. Re-running with the same arguments converts only the units not
yet converted, so no record is lost or duplicated. Do not run two conversions
into the same directory at the same time.

A finished run (manifest "complete": true) with failed units is readable for
training, with the converted units only, as webdataset loaders carry on past an
unreadable shard; the summary names each failed input, and the command exits
with status 1 so that a script can re-run it.

Inputs (tars, the CSV, its image root) and OUT_DIR may be gs:// URLs (`cloob_jax.paths`).
ArrayRecord writes local files, so a remote OUT_DIR's shards are written to a local staging
folder and uploaded as each unit completes, then the manifest: a shard the manifest lists is
always complete in the bucket.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import glob
import io
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
import tempfile
from typing import Any, Callable, Iterable, Iterator, Sequence

from cloob_jax import errors
from cloob_jax import paths
from cloob_jax.data import records

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
DEFAULT_ROWS_PER_SHARD = 10_000
DEFAULT_MAX_CAPTION_CHARS = 4096
# Counted in the manifest's `skipped` next to `records.REASONS`; only the converter meets it.
UNSAFE_MEMBER = "unsafe_member"
# JPEG validation decodes at 1/8 scale: all entropy-coded data is still parsed,
# so truncation and corruption are caught at a third of the cost.
_VALIDATE_DRAFT = 64


def expand_braces(pattern: str) -> list[str]:
  """Expands `{000..099}` (zero-padded ranges) and `{a,b}` alternatives, like webdataset."""
  m = re.search(r"\{([^{}]*)\}", pattern)
  if not m:
    return [pattern]
  head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
  r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
  if r:
    lo, hi = r.group(1), r.group(2)
    width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
    step = 1 if int(hi) >= int(lo) else -1
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
  else:
    options = body.split(",")
  return [p for o in options for p in expand_braces(head + o + tail)]


def _expand_inputs(patterns: Sequence[str]) -> list[str]:
  found = []
  for pattern in patterns:
    for p in expand_braces(pattern):
      paths.check(p, "input pattern")
      if not glob.has_magic(p):
        found.append(paths.absolute(p))
      elif paths.is_remote(p):  # glob below the last folder without wildcards
        parts = p.split("/")
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = "/".join(parts[:fixed])
        found.extend(sorted(str(m) for m in paths.path(base).glob("/".join(parts[fixed:]))))
      else:
        found.extend(os.path.abspath(m) for m in sorted(glob.glob(p)))
  return found


def _shard_name(unit: int) -> str:
  return f"shard-{unit:05d}{records.SHARD_SUFFIX}"


# ----------------------------------------------------------------------------
# Units (run in worker processes; module-level so that they pickle).


def _validate(image_bytes: bytes, caption, max_pixels: int, min_side: int,
              max_caption_chars: int) -> tuple[str, bool]:
  """Returns (cleaned caption, whether it was truncated) or raises BadRecord."""
  caption = records.clean_caption(caption)
  records.decode_image(image_bytes, max_pixels=max_pixels, min_side=min_side,
                       draft_size=_VALIDATE_DRAFT)
  if max_caption_chars and len(caption) > max_caption_chars:
    return caption[:max_caption_chars].rstrip(), True
  return caption, False


class _InputError(Exception):
  """An input that cannot be opened or read to its end; its unit is retried."""


class _Skip:
  """Yielded by a sample iterator for something left out before validation."""

  def __init__(self, reason: str):
    self.reason = reason


def _write_unit(out_path: str, samples: Iterable[tuple[str, bytes | None, Any] | _Skip],
                max_pixels: int, min_side: int, max_caption_chars: int) -> dict[str, Any]:
  """Validates samples (key, image_bytes, caption) into one shard; returns its entry.

  If the input fails (`_InputError`), the partial shard is deleted and the entry
  holds only the "error": nothing of the unit is kept, so the next run redoes it.
  """
  skipped: dict[str, int] = {}
  truncated = 0
  writer = records.ShardWriter(out_path)
  try:
    for sample in samples:
      if isinstance(sample, _Skip):
        skipped[sample.reason] = skipped.get(sample.reason, 0) + 1
        continue
      key, image_bytes, caption = sample
      try:
        if image_bytes is None or caption is None:
          raise records.BadRecord("missing", "no image" if caption is not None
                                  else "no caption")
        caption, cut = _validate(image_bytes, caption, max_pixels, min_side,
                                 max_caption_chars)
      except records.BadRecord as e:
        skipped[e.reason] = skipped.get(e.reason, 0) + 1
        continue
      truncated += cut
      writer.write(image_bytes, caption, key)
    writer.close()
  except _InputError as e:
    writer.abort()
    return {"error": " ".join(str(e).split())}  # one line
  except BaseException:
    writer.abort()
    raise
  return {"file": os.path.basename(out_path), "num_records": writer.num_records,
          "skipped": records.sum_counts([skipped]), "captions_truncated": truncated}


def _unsafe_member(member: tarfile.TarInfo) -> bool:
  """Whether a tar member must not be read: a link, device or other special file, or
  a name that is absolute or has a `..` part (a path out of an extraction folder)."""
  parts = re.split(r"[/\\]", member.name)
  if member.name.startswith(("/", "\\")) or ".." in parts:
    return True
  return not (member.isfile() or member.isdir())


def _tar_samples(path: str) -> Iterator[tuple[str, bytes | None, Any] | _Skip]:
  """Groups consecutive tar members by webdataset key; yields (key, image, caption).

  Unsafe members (`_unsafe_member`) are yielded as `_Skip(UNSAFE_MEMBER)`, unread.
  Any failure to open or read the tar raises `_InputError`.
  """
  try:
    if paths.is_remote(path):  # streamed: "r|*" reads the object front to back once
      tar = tarfile.open(fileobj=paths.path(path).open("rb"), mode="r|*")
    else:
      tar = tarfile.open(path, "r|*")
  except Exception as e:  # pylint: disable=broad-except  # also remote clients' errors
    raise _InputError(f"cannot open {path}: {type(e).__name__}: {e}") from e

  def flush(key, files):
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    caption = files.get("txt")
    if caption is None and "json" in files:
      try:
        caption = json.loads(files["json"]).get("caption")
      except (ValueError, AttributeError):
        caption = None
    return key, image, caption

  key, files = None, {}
  with tar:
    try:
      for member in tar:
        if _unsafe_member(member):
          yield _Skip(UNSAFE_MEMBER)
          continue
        if not member.isfile():  # a directory
          continue
        dirname, base = os.path.split(member.name)
        if base.startswith(".") or "." not in base:
          continue
        stem, ext = base.split(".", 1)
        member_key = os.path.join(dirname, stem)
        if member_key != key:
          if key is not None:
            yield flush(key, files)
          key, files = member_key, {}
        files[ext.lower()] = tar.extractfile(member).read()
    except Exception as e:  # pylint: disable=broad-except  # truncated, I/O, remote errors
      raise _InputError(f"{path}: {type(e).__name__}: {e}") from e
    if key is not None:
      yield flush(key, files)


def _convert_tar(unit: int, path: str, out_dir: str, max_pixels: int, min_side: int,
                 max_caption_chars: int) -> dict[str, Any]:
  entry = _write_unit(os.path.join(out_dir, _shard_name(unit)), _tar_samples(path),
                      max_pixels, min_side, max_caption_chars)
  return {"unit": unit, "input": path, **entry}


def _csv_samples(rows, image_root: str) -> Iterator[tuple[str, bytes | None, Any]]:
  """Yields (image path, image bytes or None if there is no such file, caption)."""
  for image_path, caption in rows:
    if image_path is None:
      yield "", None, caption
      continue
    full = paths.join(image_root, image_path)
    try:
      data = paths.read_bytes(full)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
      data = None  # counted as "missing"
    except Exception as e:  # pylint: disable=broad-except  # may work next time: retry
      raise _InputError(f"{full}: {type(e).__name__}: {e}") from e
    yield image_path, data, caption


def _convert_rows(unit: int, rows: list, first_row: int, image_root: str, out_dir: str,
                  max_pixels: int, min_side: int, max_caption_chars: int) -> dict[str, Any]:
  entry = _write_unit(os.path.join(out_dir, _shard_name(unit)),
                      _csv_samples(rows, image_root), max_pixels, min_side,
                      max_caption_chars)
  return {"unit": unit, "input": f"rows {first_row}..{first_row + len(rows) - 1}",
          **entry}


# ----------------------------------------------------------------------------
# Driver: resumption, the manifest, the worker pool.


def _default_workers() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class _Run:
  """The manifest of one output directory, updated as units are converted or fail."""

  def __init__(self, out_dir: str, source: dict[str, Any], validation: dict[str, Any]):
    paths.makedirs(out_dir, "OUT_DIR")
    self.out_dir = out_dir
    # Where units write their shards: OUT_DIR itself, or a local folder uploaded from.
    self.stage = tempfile.mkdtemp(prefix="cloob_jax_convert_") if paths.is_remote(out_dir) \
        else out_dir
    for stale in glob.glob(os.path.join(self.stage, "*.tmp")):
      os.remove(stale)  # a unit that was interrupted mid-write
    old = records.read_manifest(out_dir)
    if old is not None:
      # Conversions written before the caption limit existed had none.
      was = [old.get("source"), {"max_caption_chars": 0, **(old.get("validation") or {})}]
      if was != [source, validation]:
        raise errors.UserError(
            f"{out_dir} holds a conversion with different arguments:\n"
            f"  was {json.dumps(was)}\n"
            f"  now {json.dumps([source, validation])}\n"
            "use another output directory (or delete this one)")
    self.done: dict[int, dict[str, Any]] = {}  # converted units
    self.failed: dict[int, dict[str, Any]] = {}  # failed units, retried by this run
    for s in (old or {}).get("failed", []):
      self.failed[s["unit"]] = s
    for s in (old or {}).get("shards", []):
      if "error" in s:  # written before failed inputs were retried: retry it
        self.failed[s["unit"]] = {"unit": s["unit"], "input": s.get("input"),
                                  "error": s["error"]}
      elif paths.exists(paths.join(out_dir, s["file"])):
        self.done[s["unit"]] = s
    self.manifest = {"format": records.FORMAT,
                     "record_encoding": "msgpack [image_bytes, caption, key]",
                     "source": source, "validation": validation}
    self.write(complete=False)

  def add(self, entry: dict[str, Any]) -> None:
    unit = entry["unit"]
    if "error" in entry:
      self.failed[unit] = entry
    else:
      if self.stage != self.out_dir:  # the shard first, then the manifest that lists it
        local = os.path.join(self.stage, entry["file"])
        paths.upload(local, paths.join(self.out_dir, entry["file"]))
        os.remove(local)
      self.done[unit] = entry
      self.failed.pop(unit, None)
    self.write(complete=False)

  def close(self) -> None:
    if self.stage != self.out_dir:
      shutil.rmtree(self.stage, ignore_errors=True)

  def num_records(self) -> int:
    return sum(s["num_records"] for s in self.done.values())

  def write(self, complete: bool) -> dict[str, Any]:
    shards = [self.done[u] for u in sorted(self.done)]
    m = dict(self.manifest)
    m["shards"] = shards
    m["failed"] = [self.failed[u] for u in sorted(self.failed)]
    m["num_records"] = sum(s["num_records"] for s in shards)
    m["skipped"] = records.sum_counts(s["skipped"] for s in shards)
    m["captions_truncated"] = sum(s.get("captions_truncated", 0) for s in shards)
    m["complete"] = complete
    records.write_manifest(self.out_dir, m)
    return m


def _run_units(run: _Run, tasks: Iterator[tuple[Callable, tuple]], workers: int,
               total: int | None, progress: bool) -> None:
  """Runs `fn(*args)` for each task (in a pool if workers > 1), recording results."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=total, unit="shard", disable=not progress, dynamic_ncols=True)
  bar.update(len(run.done))

  def record(entry):
    run.add(entry)
    bar.update(1)
    bar.set_postfix(records=run.num_records(), refresh=False)

  try:
    if workers <= 1:
      for fn, args in tasks:
        record(fn(*args))
      return
    ctx = multiprocessing.get_context("spawn")  # safe even if the parent imported jax
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      pending: set[cf.Future] = set()
      for fn, args in tasks:
        pending.add(pool.submit(fn, *args))
        if len(pending) >= 2 * workers:  # bounded: CSV chunks hold rows in memory
          finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
          for f in finished:
            record(f.result())
      for f in cf.as_completed(pending):
        record(f.result())
  finally:
    bar.close()


def convert_webdataset(patterns: str | Sequence[str], out_dir: str, *,
                       workers: int | None = None,
                       max_pixels: int = records.DEFAULT_MAX_PIXELS,
                       min_side: int = records.DEFAULT_MIN_SIDE,
                       max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
                       progress: bool = True) -> dict[str, Any]:
  """Converts webdataset tars (`KEY.jpg|jpeg|png|webp` + `KEY.txt`) to shards.

  One output shard per input tar; a tar that fails is listed under "failed" and
  retried by the next call. Returns the final manifest.
  """
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  inputs = _expand_inputs(patterns)
  if not inputs:
    raise errors.UserError(f"no input matches {patterns}")
  out_dir = paths.absolute(paths.check(out_dir, "OUT_DIR"))
  paths.check_not_a_file(out_dir, "OUT_DIR")
  if not _converted_before(out_dir):
    _refuse_if_none_opens(inputs, out_dir)
  validation = {"max_pixels": max_pixels, "min_side": min_side,
                "max_caption_chars": max_caption_chars}
  run = _Run(out_dir, {"kind": "webdataset", "patterns": patterns, "inputs": inputs},
             validation)
  tasks = ((_convert_tar, (u, p, run.stage, max_pixels, min_side, max_caption_chars))
           for u, p in enumerate(inputs) if u not in run.done)
  workers = _default_workers() if workers is None else workers
  try:
    _run_units(run, tasks, min(workers, len(inputs)), len(inputs), progress)
    return run.write(complete=True)
  finally:
    run.close()


def _converted_before(out_dir: str) -> bool:
  """Whether OUT_DIR holds a manifest with converted units (a resumed conversion)."""
  if not paths.exists(out_dir):
    return False
  manifest = records.read_manifest(out_dir)
  return bool(manifest and manifest.get("shards"))


def _refuse_if_none_opens(inputs: Sequence[str], out_dir: str) -> None:
  """Refuses a conversion none of whose inputs can be opened (a wrong pattern, a folder not
  mounted), before OUT_DIR is made: it would only write a manifest of failed units. Stops at
  the first input that opens."""
  first = None
  for p in inputs:
    try:
      with paths.path(p).open("rb") as f:
        f.read(1)
      return
    except Exception as e:  # pylint: disable=broad-except  # also remote clients' errors
      if first is None:
        first = f"{p}: {errors.io_reason(e) or f'{type(e).__name__}: {e}'}"
  several = f"none of the {len(inputs)} inputs" if len(inputs) > 1 else "the input"
  raise errors.UserError(f"{several} can be opened (first: {first}); nothing was written to "
                         f"{out_dir}")


def _refuse_if_no_image_exists(csv_path: str, image_root: str, image_column: str,
                               caption_column: str, separator: str, rows: int = 100) -> None:
  """Refuses a CSV whose first `rows` image paths all miss under `image_root` (a wrong
  --image-root or --image-column), before OUT_DIR is made. A real dataset misses some images
  (counted as "missing"), never a hundred in a row."""
  if not paths.is_remote(image_root) and not os.path.isdir(image_root):
    raise paths.PathError(f"--image-root={image_root!r} is not a folder")
  tried = []
  for _, _, chunk in _csv_chunks(csv_path, image_column, caption_column, separator, rows):
    tried = [p for p, _ in chunk if p is not None]
    if any(paths.exists(paths.join(image_root, p)) for p in tried):
      return
    break
  if tried:
    raise paths.PathError(f"{csv_path}: none of the first {len(tried)} images exists under "
                          f"--image-root={image_root!r} (e.g. {tried[0]!r}); check "
                          f"--image-root and --image-column={image_column!r}")


def _csv_chunks(path: str, image_column: str, caption_column: str, separator: str,
                rows_per_shard: int) -> Iterator[tuple[int, int, list]]:
  """Yields (unit, first_row, [(image_path | None, caption), ...]) from a CSV/TSV."""
  # surrogateescape keeps undecodable bytes, so clean_caption can reject them.
  with io.TextIOWrapper(paths.path(path).open("rb"), encoding="utf-8", newline="",
                        errors="surrogateescape") as f:
    # TSVs (CC3M) are not quoted: a caption may start with a quote character.
    quoting = csv.QUOTE_NONE if separator == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter=separator, quoting=quoting)
    header = next(reader, None)
    if header is None:
      return
    header = [h.strip().lstrip("\ufeff") for h in header]
    for col in (image_column, caption_column):
      if col not in header:
        raise errors.UserError(f"{path}: no column {col!r} in header {header}")
    ii, ci = header.index(image_column), header.index(caption_column)
    for unit in itertools.count():
      chunk = list(itertools.islice(reader, rows_per_shard))
      if not chunk:
        return
      rows = [(r[ii] if ii < len(r) and r[ii] else None,
               r[ci] if ci < len(r) else None) for r in chunk]
      yield unit, unit * rows_per_shard, rows


def convert_csv(csv_path: str, out_dir: str, *, image_root: str,
                image_column: str = "filepath", caption_column: str = "title",
                separator: str = "\t", rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                workers: int | None = None,
                max_pixels: int = records.DEFAULT_MAX_PIXELS,
                min_side: int = records.DEFAULT_MIN_SIDE,
                max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
                progress: bool = True) -> dict[str, Any]:
  """Converts a CSV/TSV with a header row (image path, caption) to shards.

  Image paths are relative to `image_root` (or absolute). One output shard per
  `rows_per_shard` rows. A missing image file is a skipped record ("missing");
  one that exists but cannot be read fails its unit, retried by the next call.
  Returns the final manifest.
  """
  csv_path = paths.absolute(paths.check(csv_path, "CSV_PATH"))
  out_dir = paths.absolute(paths.check(out_dir, "OUT_DIR"))
  image_root = paths.absolute(paths.check(image_root, "--image-root"))
  if not paths.exists(csv_path):
    raise FileNotFoundError(f"no CSV at {csv_path}")
  paths.check_not_a_file(out_dir, "OUT_DIR")
  # Before OUT_DIR is made: the header's columns (`_csv_chunks`), the images' folder.
  _refuse_if_no_image_exists(csv_path, image_root, image_column, caption_column, separator)
  source = {"kind": "csv", "path": csv_path, "bytes": _size(csv_path),
            "image_root": image_root, "image_column": image_column,
            "caption_column": caption_column, "separator": separator,
            "rows_per_shard": rows_per_shard}
  validation = {"max_pixels": max_pixels, "min_side": min_side,
                "max_caption_chars": max_caption_chars}
  run = _Run(out_dir, source, validation)
  tasks = ((_convert_rows, (u, rows, first, image_root, run.stage, max_pixels, min_side,
                            max_caption_chars))
           for u, first, rows in _csv_chunks(csv_path, image_column, caption_column,
                                             separator, rows_per_shard)
           if u not in run.done)
  workers = _default_workers() if workers is None else workers
  try:
    _run_units(run, tasks, workers, None, progress)
    return run.write(complete=True)
  finally:
    run.close()


def _size(path: str) -> int:
  if paths.is_remote(path):
    return int(paths.path(path).stat().length)
  return os.path.getsize(path)


# ----------------------------------------------------------------------------
# CLI.


def _separator(s: str) -> str:
  named = {"TAB": "\t", "\\t": "\t", "COMMA": ",", "SEMICOLON": ";", "PIPE": "|"}
  s = named.get(s.upper() if s.isalpha() else s, s)
  if len(s) != 1:
    raise argparse.ArgumentTypeError(f"separator must be one character or TAB, got {s!r}")
  return s


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m cloob_jax.data.convert", formatter_class=argparse.RawTextHelpFormatter,
      description="\n\n".join(__doc__.split("\n\n")[:2]),  # the summary and the usage lines
      epilog="The flags of each: python -m cloob_jax.data.convert {webdataset,csv} --help")
  sub = p.add_subparsers(dest="kind", required=True)

  def common(q):
    q.add_argument("out_dir")
    q.add_argument("--traceback", action="store_true",
                   help="on a user error, show the Python traceback instead of one line")
    q.add_argument("--workers", type=int, default=None,
                   help="processes (default: all cores); <= 1 runs in this process")
    q.add_argument("--max-pixels", type=int, default=records.DEFAULT_MAX_PIXELS)
    q.add_argument("--min-side", type=int, default=records.DEFAULT_MIN_SIDE)
    q.add_argument("--max-caption-chars", type=int, default=DEFAULT_MAX_CAPTION_CHARS,
                   help="longer captions keep their first this many characters and are "
                   "counted (default %(default)s); 0: no limit")
    q.add_argument("--no-progress", action="store_true")

  w = sub.add_parser("webdataset", help="img2dataset-style tars: KEY.jpg + KEY.txt")
  w.add_argument("pattern", help="e.g. 'IN/{00000..00099}.tar' (brace ranges, globs)")
  common(w)
  c = sub.add_parser("csv", help="CSV/TSV with a header row: image path, caption")
  c.add_argument("csv_path")
  common(c)
  c.add_argument("--image-root", required=True)
  c.add_argument("--image-column", default="filepath")
  c.add_argument("--caption-column", default="title")
  c.add_argument("--separator", type=_separator, default="\t",
                 help="one character, or TAB (default)")
  c.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
  return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parser().parse_args(argv)
  kw = dict(workers=args.workers, max_pixels=args.max_pixels, min_side=args.min_side,
            max_caption_chars=args.max_caption_chars, progress=not args.no_progress)
  if args.kind == "webdataset":
    m = convert_webdataset(args.pattern, args.out_dir, **kw)
  else:
    m = convert_csv(args.csv_path, args.out_dir, image_root=args.image_root,
                    image_column=args.image_column, caption_column=args.caption_column,
                    separator=args.separator, rows_per_shard=args.rows_per_shard, **kw)
  print(summary(args.out_dir, m))
  return m


def summary(out_dir: str, manifest: dict[str, Any]) -> str:
  """What a run did: records, converted and failed units (one tar or chunk of rows each),
  skips and truncations; then a line `failed: INPUT: ERROR` per failed unit."""
  m = manifest
  retry = " (retried on the next run)" if m["failed"] else ""
  lines = [f"{out_dir}: {m['num_records']} records; {len(m['shards'])} units converted, "
           f"{len(m['failed'])} failed{retry}; skipped {m['skipped'] or 'none'}; "
           f"{m['captions_truncated']} captions truncated to "
           f"{m['validation']['max_caption_chars']} characters"]
  lines += [f"failed: {f['input']}: {f['error']}" for f in m["failed"]]
  return "\n".join(lines)


def _main_or_one_line() -> int:
  """The command line: a user error (no input matches, a changed conversion, a full disk) is
  one line `error: ...` and exit status 2, unless --traceback; 1 when a unit failed."""
  try:
    return 1 if main()["failed"] else 0
  except Exception as e:  # pylint: disable=broad-except
    text = errors.message(e)
    if text is None or "--traceback" in sys.argv:
      raise
    print(f"error: {text}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
  sys.exit(_main_or_one_line())
