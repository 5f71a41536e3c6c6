"""One path layer for every user-given path: a local folder and a `gs://` URL alike.

Workdirs, checkpoints, data_dir, manifests, eval data and outputs, exports and reports all
go through here (`etils.epath`, orbax's own path type), so no code calls `os.path.abspath`
or `open` on a URL, and a local folder named `gs:` is never created.

    paths.check(workdir, "--workdir")   # refuses an unknown scheme / a missing backend package
    paths.write_text(paths.join(workdir, "config.json"), text)   # atomic, local or remote

URLs are read and written through fsspec: `gs://` needs `gcsfs` (a dependency), `s3://`
needs `s3fs`. TensorFlow's gfile is not used even when TensorFlow is installed
(`EPATH_USE_TF=false`, unless the environment says otherwise), so one backend serves every
URL in a process and its credentials and emulator settings are fsspec's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # pylint: disable=g-import-not-at-top,wrong-import-position

from cloob_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position

# URL scheme -> the package that serves it.
BACKENDS = {"gs": "gcsfs", "s3": "s3fs"}


class PathError(errors.UserError):
  """A user-given path that cannot be used; the message names the path and the reason."""


def scheme(path) -> str | None:
  """'gs://b/x' -> 'gs'; a local path -> None."""
  text = os.fspath(path)
  head, sep, _ = text.partition("://")
  return head.lower() if sep and head and "/" not in head else None


def is_remote(path) -> bool:
  return scheme(path) is not None


def check(path, what: str = "path") -> str:
  """Returns `path` as a string, or raises PathError when no installed backend serves it."""
  text = os.fspath(path)
  if not text:
    raise PathError(f"{what} is empty")
  s = scheme(text)
  if s is None:
    return text
  if s not in BACKENDS:
    raise PathError(f"{what}={text!r}: the scheme {s}:// is not supported (use a local path or "
                    f"one of {', '.join(k + '://' for k in BACKENDS)})")
  if importlib.util.find_spec(BACKENDS[s]) is None:
    raise PathError(f"{what}={text!r}: {s}:// paths need the {BACKENDS[s]} package "
                    f"(pip install {BACKENDS[s]})")
  return text


def path(p, what: str = "path") -> epath.Path:
  """An epath.Path for a checked local path or URL."""
  return epath.Path(check(p, what))


def join(base, *parts: str) -> str:
  """Joins with '/', keeping a URL's scheme ('gs://b/run' + 'checkpoints')."""
  if not is_remote(base):
    return os.path.join(os.fspath(base), *parts)
  return "/".join([os.fspath(base).rstrip("/"), *(p.strip("/") for p in parts)])


def absolute(p) -> str:
  """A local path made absolute (orbax wants absolute directories); a URL unchanged."""
  text = check(p)
  return text if is_remote(text) else os.path.abspath(text)


def exists(p) -> bool:
  return path(p).exists()


def makedirs(p, what: str = "path") -> None:
  """mkdir -p; on an object store directories are implicit, so only the bucket is checked."""
  text = check(p, what)
  if is_remote(text):
    check_bucket(text)
  else:
    check_not_a_file(text, what)
    os.makedirs(text, exist_ok=True)


def check_not_a_file(p, what: str = "path") -> None:
  """Refuses a local folder path at which (or above which) an existing file stands, before
  anything is written: `--workdir=notes.txt` is one line, not a FileExistsError."""
  text = check(p, what)
  if is_remote(text):
    return
  here = os.path.abspath(text)
  while True:
    if os.path.lexists(here) and not os.path.isdir(here):
      where = "" if here == os.path.abspath(text) else f" ({here} is a file)"
      raise PathError(f"{what}={text!r} is a file, not a folder{where}: give a folder path")
    parent = os.path.dirname(here)
    if parent == here:
      return
    here = parent


def bucket(p) -> str:
  """'gs://b/x/y' -> 'gs://b'."""
  text = os.fspath(p)
  head, _, rest = text.partition("://")
  return f"{head}://{rest.split('/', 1)[0]}"


def check_bucket(p) -> None:
  """Refuses a URL whose bucket does not exist or cannot be reached, naming both."""
  root = bucket(p)
  try:
    found = epath.Path(root).exists()
  except Exception as e:  # pylint: disable=broad-except  (auth, network: say which path)
    raise PathError(f"{os.fspath(p)}: cannot reach the bucket {root} "
                    f"({type(e).__name__}: {e})") from None
  if not found:
    raise PathError(f"{os.fspath(p)}: the bucket {root} does not exist (or is not readable "
                    "with these credentials)")


def read_text(p) -> str:
  return path(p).read_text()


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def write_text(p, text: str) -> None:
  """Writes a whole file atomically: a local temp file renamed, or one object upload (a GCS
  object appears only once completely written)."""
  _write(p, text.encode("utf-8"))


def write_bytes(p, data: bytes) -> None:
  _write(p, data)


def _write(p, data: bytes) -> None:
  text = check(p)
  if is_remote(text):
    epath.Path(text).write_bytes(data)
    return
  os.makedirs(os.path.dirname(os.path.abspath(text)), exist_ok=True)
  tmp = f"{text}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, text)


def rename(src, dst) -> None:
  """Moves a file (on an object store: copy, then delete the source)."""
  if is_remote(src) or is_remote(dst):
    path(src).rename(path(dst))
  else:
    os.replace(src, dst)


def move_dir(src, dst) -> None:
  """Moves a directory tree (on an object store: every object copied, then deleted)."""
  if is_remote(src) or is_remote(dst):
    import fsspec  # pylint: disable=g-import-not-at-top
    fs, source = fsspec.core.url_to_fs(check(src))
    _, target = fsspec.core.url_to_fs(check(dst))
    fs.mv(source, target, recursive=True)
  else:
    os.replace(src, dst)


def upload(local_file: str, dst) -> None:
  """Copies a local file to `dst` (local or remote), whole."""
  if is_remote(dst):
    with open(local_file, "rb") as f:
      epath.Path(check(dst)).write_bytes(f.read())
  else:
    shutil.copyfile(local_file, dst)


def download(src, local_file: str) -> None:
  """Copies `src` (local or remote) to a local file, whole."""
  if is_remote(src):
    with open(local_file, "wb") as f:
      f.write(read_bytes(src))
  else:
    shutil.copyfile(src, local_file)


def local_copy(src, cache_dir: str, what: str = "path") -> str:
  """A remote folder's files copied into `cache_dir` (flat, one level), reusing files already
  there with the same size; returns the local folder. For readers that take local files only
  (ArrayRecord). Each file is written under a temporary name and renamed, so processes that
  share the cache never see half a file."""
  source = path(src, what)
  check_bucket(src)
  if not source.is_dir():
    raise PathError(f"{what}={os.fspath(src)!r} is not a folder")
  digest = os.fspath(src).rstrip("/").replace("://", "/").replace("/", "_")
  target = os.path.join(os.path.abspath(cache_dir), digest)
  os.makedirs(target, exist_ok=True)
  for item in sorted(source.iterdir()):
    if item.is_dir():
      continue
    local = os.path.join(target, item.name)
    if os.path.exists(local) and os.path.getsize(local) == item.stat().length:
      continue
    fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{item.name}.")
    with os.fdopen(fd, "wb") as f, item.open("rb") as g:
      shutil.copyfileobj(g, f, 1 << 22)
    os.replace(tmp, local)
  return target
