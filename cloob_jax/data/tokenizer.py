"""CLIP's byte-level BPE tokenizer, id-for-id compatible with open_clip and OpenAI CLIP.

  tokens = tokenize(["a photo of a cat", "a dog"])  # int32 [2, 77]

Each text is cleaned (ftfy.fix_text, html.unescape twice, whitespace collapsed,
lower-cased), split by CLIP's regex into words, numbers and punctuation runs, and
each piece is byte-encoded and merged with the 48,894 BPE merges of
`bpe_simple_vocab_16e6.txt.gz` (from OpenAI's CLIP repository, MIT licence; see
LICENSE_CLIP_BPE). Rows are `[sot, ids..., eot, 0, 0, ...]`; a row that does not fit
is cut to `context_length` and its last id replaced by `eot`.

Speed: ids are cached per space-separated chunk of the cleaned text (and per
regex piece), so a steady-state caption costs a few dict lookups. ftfy, the
slowest step, is skipped for printable ASCII text without an ftfy-style entity
(`&name;`, `&#123;`), where it provably returns the text unchanged; non-ASCII
text always goes through ftfy. `python -m cloob_jax.bench tokenizer` measures captions/s
against open_clip's tokenizer.
"""

import functools
import gzip
import html
import importlib.resources
import itertools
import re
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex

VOCAB_SIZE = 49408
SOT_TOKEN = 49406  # <start_of_text>
EOT_TOKEN = 49407  # <end_of_text>
PAD_TOKEN = 0  # also the id of "!", so padding is told apart by position, not value
CONTEXT_LENGTH = 77

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894 merge lines after the header
_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_NO_RANK = float("inf")

# CLIP's pre-tokenizer: special tokens, contractions, letter runs, single digits,
# runs of anything else that is not whitespace. None of them can contain a space.
_WORD_RE = regex.compile(
    "|".join(_SPECIAL_TOKENS)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)

# Any character that ftfy.fix_text may change: non-ASCII and the control
# characters it deletes. Text without them skips ftfy (then only '&' matters).
_NOT_PLAIN_RE = re.compile(r"[^\t\n\x0c\r\x20-\x7e]")
# ftfy's own entity pattern: plain ASCII that has none of these is left unchanged by ftfy.
_FTFY_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _byte_to_unicode() -> dict[int, str]:
  """CLIP's reversible byte -> printable character table, in vocabulary order.

  Printable Latin-1 bytes map to themselves and come first; the remaining
  (whitespace and control) bytes get fresh code points from 256 up.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  table = {b: chr(b) for b in printable}
  spare = [b for b in range(256) if b not in table]
  table.update((b, chr(256 + offset)) for offset, b in enumerate(spare))
  return table


def _clean_words(text: str) -> list[str]:
  """CLIP's 'lower' cleaning, returned as the space-free chunks of the cleaned text."""
  if _NOT_PLAIN_RE.search(text) is not None or (
      "&" in text and _FTFY_ENTITY_RE.search(text) is not None):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  elif "&" in text:  # ftfy would be a no-op, html.unescape is not (e.g. "&amp" without ';')
    text = html.unescape(html.unescape(text))
  return text.lower().split()


def clean_text(text: str) -> str:
  """CLIP's 'lower' cleaning: ftfy, double html.unescape, whitespace collapse, lower-case."""
  return " ".join(_clean_words(text))


class _ComputingCache(dict):
  """A dict that fills a missing key with `fn(key)` and empties itself when full."""

  __slots__ = ("_fn", "_max_size")

  def __init__(self, fn, max_size: int):
    super().__init__()
    self._fn = fn
    self._max_size = max_size

  def __missing__(self, key):
    value = self._fn(key)
    if len(self) >= self._max_size:
      self.clear()  # cheaper than LRU bookkeeping on every hit; hot words return at once
    self[key] = value
    return value


class Tokenizer:
  """CLIP's BPE tokenizer with per-chunk caches; picklable (caches are dropped).

  Attributes:
    vocab_size: 49408.
    sot_token: id of <start_of_text>, 49406.
    eot_token: id of <end_of_text>, 49407.
    context_length: default row length of `__call__`.
  """

  vocab_size = VOCAB_SIZE
  sot_token = SOT_TOKEN
  eot_token = EOT_TOKEN

  def __init__(self, context_length: int = CONTEXT_LENGTH, cache_size: int = 1 << 16):
    """Loads the merges from package data.

    Args:
      context_length: default number of ids per row in `__call__`.
      cache_size: most entries kept in each of the chunk and piece caches (about
        150 bytes an entry); a full cache is emptied, which bounds memory per
        worker process at the cost of re-merging hot words once.
    """
    self.context_length = context_length
    self.cache_size = cache_size
    self._load()

  def _load(self):
    data = importlib.resources.files("cloob_jax.data").joinpath(_BPE_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + _NUM_MERGES]]
    byte_table = _byte_to_unicode()
    byte_chars = list(byte_table.values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m) for m in merges] + list(_SPECIAL_TOKENS)
    if len(vocab) != VOCAB_SIZE:
      raise ValueError(f"{_BPE_FILE}: expected {VOCAB_SIZE} tokens, got {len(vocab)}")
    self._encoder = {tok: i for i, tok in enumerate(vocab)}
    self._ranks = {m: r for r, m in enumerate(merges)}
    self._specials = {tok: self._encoder[tok] for tok in _SPECIAL_TOKENS}
    # latin-1 maps each byte to the code point of the same value, so one
    # str.translate does the byte -> printable character step of a whole piece.
    self._byte_table = byte_table
    # For decode: each id's UTF-8 bytes, with a word end (and a special token) as b" ".
    unbyte = {ord(c): b for b, c in byte_table.items()}
    self._id_bytes = [
        (tok + " " if tok in self._specials else tok.replace("</w>", " "))
        .translate(unbyte).encode("latin-1") for tok in vocab]
    self._pieces = _ComputingCache(self._encode_piece, self.cache_size)
    self._chunks = _ComputingCache(self._encode_chunk, self.cache_size)

  def __getstate__(self):
    return {"context_length": self.context_length, "cache_size": self.cache_size}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()

  def _bpe(self, piece: str) -> tuple[int, ...]:
    """Merges one regex piece (no spaces) into vocab ids, in CLIP's merge order."""
    symbols = list(piece.encode("utf-8").decode("latin-1").translate(self._byte_table))
    symbols[-1] += "</w>"
    ranks = self._ranks
    while len(symbols) > 1:
      # Lowest-ranked adjacent pair; every occurrence of it merges left to right.
      best = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, _NO_RANK))
      if best not in ranks:
        break
      first, second = best
      merged, i, n = [], 0, len(symbols)
      while i < n:
        if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    encoder = self._encoder
    return tuple(encoder[s] for s in symbols)

  def _encode_piece(self, piece: str) -> tuple[int, ...]:
    special = self._specials.get(piece)
    return self._bpe(piece) if special is None else (special,)

  def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
    """Ids of one space-free chunk of cleaned text."""
    return tuple(itertools.chain.from_iterable(
        map(self._pieces.__getitem__, _WORD_RE.findall(chunk))))

  def encode(self, text: str) -> list[int]:
    """Ids of `text` without start/end tokens or padding, any length."""
    # Regex pieces never span a space, so the cleaned text splits into
    # independently cached chunks.
    return list(itertools.chain.from_iterable(
        map(self._chunks.__getitem__, _clean_words(text))))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` (cleaned, lower-cased); each word end becomes one space.

    Padding is not removed (0 is also "!"): slice a row up to its eot first.
    Special tokens decode to their names; invalid UTF-8 becomes U+FFFD.
    """
    raw = b"".join(self._id_bytes[int(i)] for i in ids)
    return raw.decode("utf-8", errors="replace").rstrip(" ")

  def __call__(self, texts: str | Sequence[str],
               context_length: int | None = None) -> np.ndarray:
    """Tokenizes a batch like `open_clip.tokenize`.

    Args:
      texts: one string or a sequence of n strings.
      context_length: ids per row; defaults to `self.context_length`.

    Returns:
      int32 [n, context_length] (n = 1 for a string): sot, ids, eot, zero
      padding; rows too long are cut and end with eot.
    """
    if isinstance(texts, str):
      texts = [texts]
    length = self.context_length if context_length is None else context_length
    if length < 2:
      raise ValueError(f"context_length must hold sot and eot (>= 2), got {length}")
    keep = length - 2
    chunk_ids = self._chunks.__getitem__
    lengths, flat = [], []
    for text in texts:
      # islice stops looking up chunks once the row is full.
      ids = list(itertools.islice(
          itertools.chain.from_iterable(map(chunk_ids, _clean_words(text))), keep))
      lengths.append(len(ids))
      flat += ids
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    out = np.zeros((len(lengths), length), np.int32)
    out[:, 0] = SOT_TOKEN
    out[:, 1:length - 1][np.arange(keep) < lengths[:, None]] = flat
    out[np.arange(len(lengths)), lengths + 1] = EOT_TOKEN
    return out


@functools.cache
def default_tokenizer() -> Tokenizer:
  """The process-wide tokenizer used by `tokenize` (built on first use)."""
  return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """CLIP token ids of `texts` as int32 [n, context_length]; see `Tokenizer.__call__`."""
  return default_tokenizer()(texts, context_length)
