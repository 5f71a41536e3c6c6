"""Input pipeline throughput: `python -m cloob_jax.bench data [--workers=2 --image-size=224 ...]`.

Writes ArrayRecord shards of realistically sized JPEGs (500x375 .. 800x600 by
default, smooth colour fields + shapes + grain, quality 90, ~50-130 KB) to a temp
dir, then reports images/s for:
  1. one thread, no grain: the levers one at a time (decode by Pillow or
     simplejpeg, resize by Pillow or OpenCV), then decode + crop + resize in one
     step (`records.decode_crop`) for each decoder, with and without the DCT-scaled
     decode sized for the crop, and tokenize;
  2. the grain training pipeline (`pipeline.create_train_dataset`) with 0 worker
     processes (decoding in threads of this process) and with --workers, for the
     --decoder path and for plain Pillow, side by side (with --decoder=fast also for
     auto, the exact path it speeds up);
  3. the same for the synthetic world at --synthetic-size (64).
Each rate is given per second of wall time (total) and per CPU-second (this
process's threads plus its worker processes): on a shared machine the second is
the better estimate of images/s per core. Each is the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def natural_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """A photo-like RGB image: smooth colour field, a few shapes, slight blur, grain."""
  img = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
  img = img.resize((width, height), Image.BICUBIC)
  detail = Image.fromarray(rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3),
                                        dtype=np.uint8)).resize((width, height), Image.BICUBIC)
  img = Image.blend(img, detail, 0.3)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 9))):
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    s = int(rng.integers(width // 12, width // 3))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    kind = rng.integers(3)
    if kind == 0:
      draw.ellipse([x - s // 2, y - s // 2, x + s // 2, y + s // 2], fill=colour)
    elif kind == 1:
      draw.rectangle([x - s // 2, y - s // 2, x + s // 2, y + s // 2], fill=colour)
    else:
      draw.polygon([(x + s * np.cos(a), y + s * np.sin(a)) for a in rng.uniform(0, 6.3, 3)],
                   fill=colour)
  img = img.filter(ImageFilter.GaussianBlur(1.0))
  # Sensor-like grain: what makes real JPEGs 50-100 KB rather than 20.
  grain_noise = rng.normal(0, 4.5, (height, width, 1))
  return Image.fromarray(np.clip(np.asarray(img) + grain_noise, 0, 255).astype(np.uint8))


def write_shards(directory: str, num_images: int, num_unique: int, seed: int = 0,
                 widths: tuple[int, int] = (500, 800)):
  """Writes `num_images` records (cycling `num_unique` 4:3 JPEGs) in 4 shards; returns sizes."""
  from cloob_jax.bench import tokenizer as bench_tokenizer  # pylint: disable=g-import-not-at-top
  from cloob_jax.data import records  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  jpegs = []
  for _ in range(num_unique):
    w = int(rng.integers(widths[0], widths[1] + 1))
    h = int(round(w * 0.75))
    buf = io.BytesIO()
    natural_image(rng, w, h).save(buf, "JPEG", quality=90)
    jpegs.append((buf.getvalue(), (w, h)))
  captions = bench_tokenizer.synthetic_alt_text(num_images, seed=seed)
  shards, per_shard = [], -(-num_images // 4)
  for s in range(4):
    name = f"shard-{s:05d}{records.SHARD_SUFFIX}"
    writer = records.ShardWriter(os.path.join(directory, name))
    for i in range(s * per_shard, min(num_images, (s + 1) * per_shard)):
      writer.write(jpegs[i % num_unique][0], captions[i], f"{i:08d}")
    writer.close()
    shards.append({"unit": s, "file": name, "num_records": writer.num_records, "skipped": {}})
  records.write_manifest(directory, {
      "format": records.FORMAT, "source": {"kind": "bench"}, "shards": shards,
      "num_records": num_images, "skipped": {}, "complete": True})
  return [len(j) for j, _ in jpegs], [wh for _, wh in jpegs]


def _cpu_seconds() -> float:
  """CPU seconds used so far by this process (all threads) and its live children."""
  total = time.process_time()  # ns resolution; os.times() ticks are 10 ms
  me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
  try:
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
  except OSError:
    return total
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == me:  # ppid; then utime, stime at 11, 12
      total += (int(fields[11]) + int(fields[12])) / tick
  return total


def _best_rate(fn, n: int, repeats: int) -> tuple[float, float]:
  """(images/s of wall time, images/s of CPU time), best of `repeats`."""
  wall = cpu = 0.0
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    fn()
    wall = max(wall, n / (time.perf_counter() - start))
    cpu = max(cpu, n / max(_cpu_seconds() - cpu_start, 1e-9))
  return wall, cpu


def single_core(source, image_size: int, context_length: int, n: int, repeats: int,
                decoders: tuple[str, ...]):
  """{stage: (wall images/s, CPU images/s)} on one thread, as the pipeline does it."""
  from cloob_jax.data import records, tokenizer, transforms  # pylint: disable=g-import-not-at-top
  recs = [source[i]["image_bytes"] for i in range(n)]
  out = {}
  out["read+unpack"] = _best_rate(lambda: [source[i] for i in range(n)], n, repeats)
  images = [records.decode_image(r) for r in recs]
  boxes = [transforms.random_resized_crop_box(*im.shape[:2], np.random.default_rng(i))
           for i, im in enumerate(images)]
  out["decode: Pillow"] = _best_rate(lambda: [records.decode_image(r) for r in recs], n, repeats)
  pil = [Image.fromarray(im) for im in images]
  out["resize: Pillow bicubic"] = _best_rate(lambda: [
      im.resize((image_size, image_size), Image.BICUBIC, box=(x, y, x + w, y + h))
      for im, (y, x, h, w) in zip(pil, boxes)], n, repeats)
  codecs = records.fast_codecs()
  if codecs:
    simplejpeg, _ = codecs
    out["decode: simplejpeg"] = _best_rate(
        lambda: [simplejpeg.decode_jpeg(r, colorspace="RGB") for r in recs], n, repeats)
    out["decode: simplejpeg fastupsample"] = _best_rate(
        lambda: [simplejpeg.decode_jpeg(r, colorspace="RGB", fastupsample=True) for r in recs],
        n, repeats)
    out["resize: OpenCV"] = _best_rate(lambda: [
        transforms.resize_box_fast(im, b, image_size) for im, b in zip(images, boxes)],
        n, repeats)
  for decoder in decoders:
    for scaled in (False, True):
      def crops():
        rng = np.random.default_rng(0)
        box_fn = lambda h, w: transforms.random_resized_crop_box(h, w, rng)
        return [records.decode_crop(r, image_size, box_fn, decoder=decoder, scaled=scaled)
                for r in recs]
      name = f"{decoder}, {'DCT-scaled' if scaled else 'full'}"
      out[f"decode+crop ({name})"] = _best_rate(crops, n, repeats)
  captions = [source[i]["caption"] for i in range(min(len(source), 1024))]
  tokenizer.tokenize(captions, context_length)  # load the vocabulary, warm the cache
  out["tokenize (batched)"] = _best_rate(
      lambda: [tokenizer.tokenize(captions[i:i + 64], context_length)
               for i in range(0, len(captions), 64)], len(captions), repeats)
  for decoder in decoders:
    stages = ("read+unpack", f"decode+crop ({decoder}, DCT-scaled)", "tokenize (batched)")
    out[f"= all stages ({decoder})"] = tuple(
        1 / sum(1 / out[k][j] for k in stages) for j in (0, 1))
  return out


def pipeline_rate(source, *, workers: int, batch_size: int, batches: int, repeats: int,
                  **kwargs) -> tuple[float, float]:
  """(images/s, images per CPU-second) of the grain train pipeline in its steady state.

  Read-ahead is one batch per process (and one batch queued per worker), and the
  warm-up drains what the buffers held, so the timed batches are the ones made
  while timing (with grain's default read-ahead of 256 images the buffers alone
  could hold more than a timed run).
  """
  from cloob_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.create_train_iterator(
      source, global_batch_size=batch_size, process_index=0, process_count=1,
      num_workers=workers, prefetch_buffer_size=batch_size, worker_buffer_size=1, **kwargs)
  try:
    for _ in range(2 + 2 * max(workers, 1)):  # worker start-up, then the buffers drained
      next(it)

    def consume():
      for _ in range(batches):
        next(it)
    return _best_rate(consume, batches * batch_size, repeats)
  finally:
    if hasattr(it, "close"):
      it.close()


def cpu_model() -> str:
  """The machine's CPU, as `lscpu` names it ('Model name')."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    out = ""
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return platform.processor() or "unknown CPU"


def run(argv=None):
  from cloob_jax.data import records  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="python -m cloob_jax.bench data", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workers", type=int, default=2, help="grain worker processes")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--synthetic-size", type=int, default=64)
  p.add_argument("--context-length", type=int, default=77)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--batches", type=int, default=12, help="timed batches per run")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--num-images", type=int, default=2048, help="records in the shards")
  p.add_argument("--num-unique", type=int, default=128, help="distinct JPEGs among them")
  p.add_argument("--widths", type=int, nargs=2, default=(500, 800), metavar=("MIN", "MAX"),
                 help="JPEG widths, uniform in [MIN, MAX] (height: 3/4 of it); CC3M's "
                      "typical size: 500 500")
  p.add_argument("--read-threads", type=int, default=None,
                 help="decode threads per process (default: 1 with workers, 2 without)")
  p.add_argument("--decoder", choices=records.DECODERS, default="auto",
                 help="the path compared with plain Pillow (auto: simplejpeg + OpenCV; "
                      "fast: auto with plain chroma upsampling, compared with auto too)")
  p.add_argument("--no-draft", action="store_true", help="pipeline without the DCT-scaled "
                                                         "JPEG decode")
  p.add_argument("--skip-synthetic", action="store_true")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  codecs = records.fast_codecs()
  fast = (f"simplejpeg {codecs[0].__version__} + OpenCV {codecs[1].__version__}" if codecs
          else "not installed: pip install simplejpeg opencv-python-headless")
  decoders = tuple(dict.fromkeys((args.decoder, "auto" if args.decoder == "fast" else "pillow",
                                  "pillow")))
  print(f"# cloob_jax data benchmark: {cpu_model()}, {cores} cores visible, load average "
        f"{os.getloadavg()[0]:.1f}, batch {args.batch_size}, best of {args.repeats}")
  print(f"# decoders: {', '.join(decoders)}; fast path (auto): {fast}; "
        f"Pillow {Image.__version__}")
  with tempfile.TemporaryDirectory(prefix="cloob_bench_") as tmp:
    start = time.perf_counter()
    sizes, dims = write_shards(tmp, args.num_images, args.num_unique, widths=args.widths)
    print(f"shards: {args.num_images} records, {args.num_unique} distinct JPEGs "
          f"{min(dims)}..{max(dims)}, {np.mean(sizes) / 1e3:.0f} KB mean "
          f"({min(sizes) / 1e3:.0f}..{max(sizes) / 1e3:.0f}), "
          f"written in {time.perf_counter() - start:.1f}s")
    source = records.ImageTextSource(tmp)

    print(f"\n## one thread, no grain, {args.image_size}x{args.image_size}: images/s "
          "(wall, per CPU-second)")
    for stage, (wall, cpu) in single_core(source, args.image_size, args.context_length,
                                          min(64, args.num_unique), args.repeats,
                                          decoders).items():
      print(f"  {stage:36s} {wall:7.0f} {cpu:7.0f}")

    summary = []

    def report(title, src, size, decoders, **kw):
      print(f"\n## grain pipeline, {title} at {size}x{size}: images/s")
      for decoder in decoders:
        for w in sorted({0, args.workers}):
          threads = args.read_threads or (1 if w else 2)
          wall, cpu = pipeline_rate(src, workers=w, batch_size=args.batch_size,
                                    batches=args.batches, repeats=args.repeats,
                                    image_size=size, context_length=args.context_length,
                                    read_threads=threads, decoder=decoder, **kw)
          per = f"{wall / w:7.0f} per worker" if w else f"{wall / threads:7.0f} per thread"
          name = f"decoder={decoder}" if len(decoders) > 1 else ""
          print(f"  {name:15s} workers={w} threads={threads}: {wall:7.0f} total {per}, "
                f"{cpu:7.0f} per CPU-second (all processes)")
          if len(decoders) > 1:
            summary.append((decoder, w, threads, wall, cpu))

    report("ArrayRecord JPEG shards", source, args.image_size, decoders,
           jpeg_draft=not args.no_draft)
    rows = {(d, w): (wall, cpu) for d, w, _, wall, cpu in summary}
    for decoder in decoders[:-1]:
      print(f"\n## {decoder} against pillow, same run: per core (per CPU-second) "
            "and total images/s")
      for w in sorted({0, args.workers}):
        (fw, fc), (pw, pc) = rows[decoder, w], rows["pillow", w]
        print(f"  workers={w}: {decoder} {fc:5.0f} per core, {fw:5.0f} total | "
              f"pillow {pc:5.0f} per core, {pw:5.0f} total | x{fc / pc:.2f} per core")
    if not args.skip_synthetic:
      from cloob_jax.data import synthetic  # pylint: disable=g-import-not-at-top
      world = synthetic.SyntheticWorld(split="train", seed=0, image_size=args.synthetic_size,
                                       num_examples=args.num_images)
      report("synthetic world", world, args.synthetic_size, decoders[:1])


if __name__ == "__main__":
  run()
