"""User errors, and the one line that says what went wrong.

A user error is something the person running a binary can fix: a bad config value, an
unknown model, a missing path, a damaged checkpoint, an unsupported format, a full disk.
The binaries (`cloob_jax.cli.run`) print it as `error: ...` and exit with status 2; anything
else is a bug and keeps its traceback.

    raise errors.UserError(f"{path}: not a training workdir")
    errors.message(e)   # -> one line for a user error (OSError and jax/orbax wrappers too), or None
"""

from __future__ import annotations

import errno
import re


class UserError(ValueError):
  """Bad input that the user can fix; the message names the file, key or value."""


class UserKeyError(UserError, KeyError):
  """An unknown key (config arg, override); a KeyError for callers that catch one."""

  def __str__(self):
    return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# errno -> what a pod user is told (the symbol is printed too: it is what people search for).
_OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
}

# The same conditions as jax, orbax and tensorstore word them, inside their own exceptions
# (XlaRuntimeError, ValueError("... RESOURCE_EXHAUSTED ..."), asyncio wrappers).
_WRAPPED = (
    (re.compile(r"No space left on device|ENOSPC", re.I), errno.ENOSPC),
    (re.compile(r"Disk quota exceeded|EDQUOT", re.I), errno.EDQUOT),
    (re.compile(r"Read-only file system|EROFS", re.I), errno.EROFS),
    (re.compile(r"Permission denied|EACCES", re.I), errno.EACCES),
)


def one_line(text: str) -> str:
  return " ".join(str(text).split())


def os_reason(code: int) -> str:
  """errno -> 'no space left on the device (ENOSPC)'."""
  name = errno.errorcode.get(code, str(code))
  return f"{_OS_REASONS.get(code, 'I/O error')} ({name})"


def io_reason(e: BaseException) -> str | None:
  """The I/O condition behind `e` or its causes (ENOSPC, EACCES, ...) as words; else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _OS_REASONS:
      return os_reason(e.errno)
    for pattern, code in _WRAPPED:
      if pattern.search(str(e)):
        return os_reason(code)
    e = e.__cause__ or e.__context__
  return None


def message(e: BaseException, user_errors: tuple[type[BaseException], ...] = ()) -> str | None:
  """One line for a user error (`UserError`, `user_errors`, an OSError a user can fix, or a
  jax/orbax error around one); None for anything else, which keeps its traceback."""
  if isinstance(e, UserError) or (user_errors and isinstance(e, user_errors)):
    if isinstance(e, KeyError) and len(e.args) == 1:
      return one_line(e.args[0])
    return one_line(e) or type(e).__name__
  if isinstance(e, OSError) and e.errno in _OS_REASONS:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{os_reason(e.errno)}"
  if isinstance(e, FileNotFoundError):
    return one_line(e)
  reason = io_reason(e)
  if reason is not None:
    paths = re.findall(r"(?:gs://|/)[\w./@:+-]+", str(e))
    return f"{paths[0]}: {reason}" if paths else reason
  return None
