"""Tokenizer throughput: `python -m cloob_jax.bench tokenizer [--captions=20000 ...]`.

Captions/s of a fresh `cloob_jax.data.tokenizer.Tokenizer` and of open_clip's tokenizer
(when installed) on the same alt-text-like captions (`synthetic_alt_text`, also the captions
of `bench data`'s shards).
"""

from __future__ import annotations

import argparse
import random
import time

from cloob_jax.data import tokenizer


def synthetic_alt_text(num_captions: int, seed: int = 0) -> list[str]:
  """Alt-text-like captions of mixed length for benchmarks, [num_captions] strings.

  Mostly English stock-photo, product and scene captions with a long tail of
  rare tokens (file names, numbers), ~10% with non-ASCII text and ~5% with HTML
  entities, like web alt-text.
  """
  rng = random.Random(seed)
  adjs = ("red blue green small large old modern vintage happy young beautiful dark "
          "bright wooden white black cute empty busy sunny snowy").split()
  nouns = ("cat dog woman man child car house tree beach city street mountain kitchen "
           "table laptop phone flower bird river bridge dress shoes jacket cake coffee "
           "building sky garden office team family wedding sunset forest").split()
  places = ("in the park", "on a table", "at the beach", "in New York", "at night",
            "in the office", "on white background", "in the snow", "near the river")
  brands = ("Nike", "IKEA", "Canon EOS", "Samsung Galaxy", "Levi's", "H&amp;M")
  foreign = ("Café au lait à Paris", "Straße in München", "東京タワーの夜景",
             "Платье женское летнее", "منظر طبيعي جميل", "São Paulo – Brasil",
             "Nuevo diseño 2021 ❤️", "かわいい猫 🐱", "Ελληνική σαλάτα")

  def phrase():
    return f"{rng.choice(('a', 'the', 'two', 'A'))} {rng.choice(adjs)} {rng.choice(nouns)}"

  def caption():
    kind = rng.random()
    if kind < 0.35:
      text = f"{phrase()} {rng.choice(places)}"
    elif kind < 0.55:
      text = (f"{rng.choice(brands)} {rng.choice(adjs).title()} {rng.choice(nouns).title()}"
              f" - Size {rng.choice('SMLX')}, {rng.randint(1, 999)}.{rng.randint(0, 99):02d} USD")
    elif kind < 0.7:
      text = f"IMG_{rng.randint(0, 99999):05d}.jpg"
    elif kind < 0.8:
      text = f"{rng.choice(foreign)} {phrase()}"
    else:  # stock-photo sentences, long
      text = ". ".join(f"{phrase()} {rng.choice(places)}" for _ in range(rng.randint(2, 8)))
      text += f". Stock photo #{rng.randint(10**6, 10**8)}"
    if rng.random() < 0.05:
      text += " &quot;best&quot; &amp; more"
    return text

  return [caption() for _ in range(num_captions)]


def benchmark(num_captions: int = 20_000, batch_size: int = 256, repeats: int = 3,
              compare_open_clip: bool = True) -> dict[str, float]:
  """Captions/s of a fresh `Tokenizer` (and of open_clip's, if installed) in this process.

  Both see the same `synthetic_alt_text` captions in batches of `batch_size`.
  "cold" is the first pass from empty caches; "warm" the best of `repeats`
  further passes (best-of, because the machine may be shared).
  """
  captions = synthetic_alt_text(num_captions)
  batches = [captions[i:i + batch_size] for i in range(0, len(captions), batch_size)]

  def rate(fn):
    start = time.perf_counter()
    for batch in batches:
      fn(batch)
    return num_captions / (time.perf_counter() - start)

  def rates(name, fn):
    return {f"{name}_cold": rate(fn),
            f"{name}_warm": max(rate(fn) for _ in range(repeats))}

  result = rates("cloob_jax", tokenizer.Tokenizer())
  if compare_open_clip:
    try:
      from open_clip import tokenizer as oc_tokenizer  # pylint: disable=g-import-not-at-top
    except ImportError:
      return result
    result.update(rates("open_clip", oc_tokenizer.SimpleTokenizer()))
  return result


def run(argv=None):
  p = argparse.ArgumentParser(prog="python -m cloob_jax.bench tokenizer", description=__doc__)
  p.add_argument("--captions", type=int, default=20_000)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-open-clip", action="store_true", help="skip open_clip's tokenizer")
  args = p.parse_args(argv)
  result = benchmark(args.captions, args.batch_size, args.repeats, not args.no_open_clip)
  for name, value in result.items():
    print(f"{name}: {value:,.0f} captions/s")
