"""Tests for cloob_jax.data.tokenizer: id parity with open_clip, truncation, shapes, decode."""

import json
import pathlib
import pickle
import random

import numpy as np
import pytest

from cloob_jax.data import tokenizer

GOLDEN = pathlib.Path(__file__).parent / "data" / "tokenizer_golden.json"

_WORDS = ("a photo of the cat dog on in at with two three small large red blue green "
          "beach sunset city street woman man child car house tree mountain river "
          "vintage modern portrait close-up view background isolated").split()
_FRAGMENTS = {
    "accents": ["café", "naïve", "Ångström", "São Paulo", "Zürich", "façade", "crème brûlée",
                "Dvořák", "Łódź", "résumé", "jalapeño", "Ærø", "straße", "İstanbul", "ﬁsh ﬂower"],
    "cjk": ["東京タワー", "北京烤鸭", "한국어 텍스트", "かわいい猫", "日本の風景写真", "中文字幕"],
    "scripts": ["مرحبا بالعالم", "صورة جميلة", "Привет мир", "ΟΔΟΣ ΣΑΣ", "Σίσυφος", "नमस्ते दुनिया",
                "สวัสดีครับ", "שלום עולם", "ሰላም"],
    "emoji": ["🐶", "👍🏽", "🏳️‍🌈", "❤️", "😂😂😂", "👨‍👩‍👧‍👦", "🇩🇪", "✔", "★☆"],
    "entities": ["&amp;", "&quot;", "&#39;", "&lt;", "&gt;", "&amp;amp;", "&amp;lt;b&amp;gt;",
                 "&nbsp;", "&#x2019;", "&hellip;", "&eacute;", "&EACUTE;", "&amp", "&copy",
                 "Tom & Jerry", "H&M", "AT&T", "&#128512;", "&unknown;", "&lt;b&gt;bold&lt;/b&gt;"],
    "html": ["<b>bold</b>", "<br/>", "a < b > c", "<p>&amp;</p>", "x<y"],
    "urls": ["https://www.example.com/path/to/img_01.jpg?w=640&h=480",
             "http://foo.bar/baz#frag", "www.shop.co.uk", "user@example.org", "ftp://x.y/z"],
    "numbers": ["1920x1080", "3.14159", "$19.99", "2021-05-06", "1,000,000", "42", "0.5mm",
                "No.7", "4K", "½", "²", "٣", "一二三", "Ⅻ", "１２３"],
    "punct": ["!!!", "...", "?!?", "---", "***", "((()))", "--->", "…", "“quoted”", "‘single’",
              "«guillemets»", "—", "#hashtag", "@mention", "~~", "|", "_under_score_"],
    "contractions": ["it's", "don't", "they're", "we've", "I'm", "we'll", "she'd", "IT'S",
                     "DON'T", "O'Brien", "rock'n'roll", "'quoted'", "dogs'", "y'all", "’tis",
                     "can’t", "'s", "'LL"],
    "odd": ["cafÃ©", "â€™", "Ã¼ber", "ＬＯＵＤ　ＮＯＩＳＥＳ", "a\u00a0b", "zero\u200bwidth",
            "line\u2028sep", "tab\there", "cr\r\nlf", "vt\x0bff\x0cx", "bell\x07", "del\x7f",
            "\x1b[31mred\x1b[0m", "\ufeffbom", "e\u0301", "\x85next", "sep\x1crec",
            "<start_of_text>", "<END_OF_TEXT>", "x<<end_of_text>>", "<|endoftext|>"],
}
_CONTRACTION_SUFFIXES = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _recase(rng, text):
  return rng.choice([str.lower, str.upper, str.title, lambda t: t, lambda t: "".join(
      c.upper() if rng.random() < 0.5 else c for c in t)])(text)


def make_corpus(n=1200, seed=0):
  """Deterministic, varied captions: [n] strings."""
  rng = random.Random(seed)
  kinds = list(_FRAGMENTS)
  corpus = ["", " ", "\t\n  \r", "a", "A", "'", "&", " ".join(["long"] * 300),
            "a " * 74, "a " * 75, "a " * 76, "!" * 200,
            # Plain ASCII with '&' but no ftfy entity: only html.unescape acts.
            "&amp without semicolon", "&copy 2020", "it&#39s", "&#x27quoted&#x27", "&lt&gt",
            "Q&A &&& AT&T", "&ampamp;", "&amp&amp", "&#0", "form\x0cfeed cr\rreturn &amp"]
  while len(corpus) < n:
    parts = []
    for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 40])):
      r = rng.random()
      if r < 0.45:
        word = rng.choice(_WORDS)
        if rng.random() < 0.15:
          word += rng.choice(_CONTRACTION_SUFFIXES)
        parts.append(word)
      else:
        parts.append(rng.choice(_FRAGMENTS[rng.choice(kinds)]))
    seps = [" ", " ", " ", "", "  ", ", ", "\n", "\t", ". "]
    text = parts[0] + "".join(rng.choice(seps) + p for p in parts[1:])
    if rng.random() < 0.5:
      text = _recase(rng, text)
    if rng.random() < 0.1:
      text = "  " + text + " \n"
    corpus.append(text)
  return corpus


@pytest.fixture(scope="module")
def corpus():
  return make_corpus()


@pytest.fixture(scope="module")
def tok():
  return tokenizer.Tokenizer()


@pytest.fixture(scope="module")
def open_clip_tokenizer():
  oc = pytest.importorskip("open_clip")
  return oc.tokenizer.SimpleTokenizer()  # the tokenizer of open_clip.tokenize / ViT-B-32


@pytest.mark.parametrize("context_length", [77, 16])
def test_parity_with_open_clip(corpus, open_clip_tokenizer, context_length):
  ours = tokenizer.tokenize(corpus, context_length=context_length)
  theirs = open_clip_tokenizer(corpus, context_length=context_length).numpy()
  mismatched = [corpus[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
  assert not mismatched, f"{len(mismatched)} captions differ, e.g. {mismatched[:3]!r}"
  # Truncation really happened for some rows, so the eot rule is exercised.
  assert (ours[:, -1] == tokenizer.EOT_TOKEN).sum() > 10


def test_encode_parity_with_open_clip(tok, corpus, open_clip_tokenizer):
  for text in corpus[::7]:
    assert tok.encode(text) == open_clip_tokenizer.encode(text), repr(text)


def test_matches_golden_ids():
  """Parity without open_clip: ids that open_clip produced for part of the corpus."""
  golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
  texts = [g["text"] for g in golden]
  ours = tokenizer.tokenize(texts)
  for row, g in zip(ours, golden):
    expected = np.zeros(77, np.int32)
    expected[:len(g["ids"])] = g["ids"]
    np.testing.assert_array_equal(row, expected, err_msg=repr(g["text"]))


@pytest.mark.parametrize("context_length", [16, 32])
def test_context_length_truncates_with_eot_last(tok, context_length):
  words = context_length - 2  # each "a" is one token
  fits, too_long = "a " * words, "a " * (words + 1)
  [a] = tok.encode("a")
  out = tokenizer.tokenize([fits, too_long, "a a", ""], context_length=context_length)
  assert out.shape == (4, context_length) and out.dtype == np.int32
  full = [tokenizer.SOT_TOKEN] + [a] * words + [tokenizer.EOT_TOKEN]
  np.testing.assert_array_equal(out[0], full)
  np.testing.assert_array_equal(out[1], full)  # cut, and the last id is eot again
  np.testing.assert_array_equal(out[2], [tokenizer.SOT_TOKEN, a, a, tokenizer.EOT_TOKEN]
                                + [0] * (context_length - 4))
  np.testing.assert_array_equal(out[3, :3], [tokenizer.SOT_TOKEN, tokenizer.EOT_TOKEN, 0])
  long_text = "a photo of a very long caption " * 20
  np.testing.assert_array_equal(
      tokenizer.tokenize(long_text, context_length)[0],
      tokenizer.tokenize(long_text)[0, :context_length - 1].tolist() + [tokenizer.EOT_TOKEN])


def test_context_length_too_small_raises():
  with pytest.raises(ValueError):
    tokenizer.tokenize("a", context_length=1)


def test_shapes_and_dtypes():
  one = tokenizer.tokenize("a photo of a cat")
  assert one.shape == (1, 77) and one.dtype == np.int32
  many = tokenizer.tokenize(["a photo of a cat", "a dog", ""])
  assert many.shape == (3, 77) and many.dtype == np.int32
  np.testing.assert_array_equal(many[0], one[0])
  np.testing.assert_array_equal(tokenizer.tokenize(("a dog",)), many[1:2])
  np.testing.assert_array_equal(tokenizer.tokenize(np.array(["a dog"])), many[1:2])
  empty = tokenizer.tokenize([])
  assert empty.shape == (0, 77) and empty.dtype == np.int32


def test_constants_and_special_tokens(tok):
  assert (tok.vocab_size, tok.sot_token, tok.eot_token) == (49408, 49406, 49407)
  assert tok.encode("<start_of_text> <end_of_text>") == [49406, 49407]
  assert tok.encode("") == [] and tok.encode(" \n\t ") == []


def test_decode_round_trip(tok):
  for text in ["a photo of a cat", "two dogs playing in the snow", "hello world",
               "the quick brown fox jumps over the lazy dog"]:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, np.int32)) == text
  # Punctuation and each digit are separate words in CLIP's BPE, so they get spaces.
  assert tok.decode(tok.encode("Café, 東京 2024!")) == "café , 東京 2 0 2 4 !"


def test_small_cache_and_pickle_give_same_ids(corpus):
  texts = corpus[:100]
  expected = tokenizer.tokenize(texts)
  small = tokenizer.Tokenizer(cache_size=8)  # empties its caches over and over
  np.testing.assert_array_equal(small(texts), expected)
  clone = pickle.loads(pickle.dumps(small))  # grain ships transforms to worker processes
  assert len(pickle.dumps(small)) < 1000  # the vocabulary is reloaded, not pickled
  np.testing.assert_array_equal(clone(texts), expected)


def write_golden(path=GOLDEN, every=6):
  """Regenerates the golden fixture from open_clip: `python tests/tokenizer_test.py`."""
  import open_clip  # pylint: disable=g-import-not-at-top
  texts = make_corpus()[::every]
  rows = open_clip.tokenize(texts).numpy()
  golden = [{"text": t, "ids": row[:int(np.flatnonzero(row == 49407)[-1]) + 1].tolist()}
            for t, row in zip(texts, rows)]
  path.parent.mkdir(exist_ok=True)
  lines = ",\n".join(json.dumps(g) for g in golden)  # one caption per line, ASCII only
  path.write_text(f"[\n{lines}\n]\n", encoding="utf-8")


if __name__ == "__main__":
  write_golden()
