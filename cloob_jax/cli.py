"""The binaries' shared entry point: absl's `app.run`, with user errors as one line.

    if __name__ == "__main__":
      cli.run(main)

A user error (`errors.message`: a bad flag or config key, an unknown model, a missing path, a
damaged checkpoint, an unsupported format, a full disk) prints `error: ...` on stderr and
exits with status 2, with no traceback; `--traceback` shows the whole trace instead. A bad
flag or `--config.KEY` is reported the same way, before `main` runs. `--help` prints the
binary's docstring and its own flags (those of `key_modules` and --traceback too) and exits 0.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags

from cloob_jax import errors

if "traceback" not in flags.FLAGS:
  flags.DEFINE_bool("traceback", False,
                    "On a user error, show the Python traceback instead of one line.")

USAGE_EXIT = 2
# absl's help flags: each prints the usage, then exits (absl: status 1; here: 0).
_HELP = ("-?", "-h", "-help", "--help", "--helpshort", "--helpfull", "--helpxml")


def fail(text: str):
  """Prints `error: text` on stderr and exits with status 2."""
  print(f"error: {errors.one_line(text)}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


def _last_line(text: str) -> str:
  """The line that says what failed, from a message that quotes a traceback or a search list
  (ml_collections' config-file errors): its last line, without 'module.Error: ' or '[Errno N]'."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if len(lines) <= 1 and "Traceback (most recent call last)" not in str(text):
    return errors.one_line(text)
  last = lines[-1] if lines else ""
  last = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
  return re.sub(r"^\[Errno \d+\] ", "", last)


def _config_flag_errors() -> list[str]:
  """A --config file that could not be loaded: ml_collections defers the error to first use."""
  found = []
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if type(value).__name__ == "_ErrorConfig":
      found.append(f"--{name}: {_last_line(object.__getattribute__(value, '_error'))}")
  return found


class _ReportedIOErrors(logging.Filter):
  """Drops the log records of an I/O failure (a full disk, a permission) that orbax's
  background threads log, one traceback each, and asyncio's "Task exception was never
  retrieved" for the same error: the binary reports the failure once, as the one line."""

  def filter(self, record):
    if record.levelno < logging.ERROR or not (
        "orbax" in record.pathname or record.name == "asyncio"):
      return True
    cause = record.exc_info[1] if record.exc_info else None
    return (errors.io_reason(cause) if cause else errors.io_reason(
        RuntimeError(record.getMessage()))) is None


def _quiet_reported_failures():
  """Drops noise around a failure the binary reports itself: orbax's per-thread logs of an
  I/O error, and the tracebacks of `RuntimeError: Event loop is closed` that tensorstore's
  callbacks print (as unraisable exceptions) into orbax's closed event loop afterwards."""
  for name in ("absl", "asyncio"):  # orbax logs through absl's logger
    logging.getLogger(name).addFilter(_ReportedIOErrors())
  previous = sys.unraisablehook

  def hook(unraisable):
    if (unraisable.exc_type is RuntimeError
        and str(unraisable.exc_value) == "Event loop is closed"):
      return
    previous(unraisable)

  sys.unraisablehook = hook


def _show_traceback(argv: Sequence[str]) -> bool:
  try:
    return bool(flags.FLAGS.traceback)
  except flags.UnparsedFlagAccessError:  # flags not parsed yet: read argv
    return any(a in ("--traceback", "--traceback=true", "--traceback=True") for a in argv)


def _asks_for_help(argv: Sequence[str]) -> bool:
  return any(a.split("=")[0] in _HELP for a in argv[1:])


def _show_in_help(key_modules: Sequence[object]) -> None:
  """Lists the flags of `key_modules` and --traceback in the main module's --help (absl
  shows only the flags defined in the file that runs)."""
  main_module = sys.argv[0]  # the name absl's --help looks up
  names = ["traceback"] + [f.name for m in key_modules
                           for f in flags.FLAGS.get_key_flags_for_module(m.__name__)]
  for name in names:
    flags.FLAGS.register_key_flag_for_module(main_module, flags.FLAGS[name])


def run(main: Callable[[list[str]], object], *,
        flags_parser: Callable[[list[str]], list[str]] | None = None,
        user_errors: tuple[type[BaseException], ...] = (),
        key_modules: Sequence[object] = ()):
  """`app.run(main)`, printing a user error as one line (exit 2) unless --traceback.

  Args:
    main: the binary's main(argv).
    flags_parser: as app.run's (default: absl's own parser).
    user_errors: exception types this binary raises only for bad input, beyond
      `errors.UserError`, OSError a user can fix and FileNotFoundError.
    key_modules: modules whose flags are the binary's own, listed by --help beside those
      defined in the file that runs.
  """
  parse = flags_parser or (lambda argv: flags.FLAGS(argv))

  def parse_or_fail(argv):
    try:
      rest = parse(argv)
    except SystemExit as e:  # absl's --help printed the usage and exits with status 1
      if e.code == 1 and _asks_for_help(argv):
        sys.exit(0)
      raise
    except (flags.Error, AttributeError, KeyError) as e:  # an unknown flag, a bad --config.KEY
      if _show_traceback(argv):
        raise
      if isinstance(e, flags.Error):
        text = str(e)
        if "Traceback" in text:  # 'flag --config=F: Error whilst parsing config file: Traceback..'
          head = text.split(": Error whilst")[0].split(": Traceback")[0]
          text = f"{head}: {_last_line(text)}"
        fail(text)
      # ml_collections: AttributeError("'KEY'"), or with 'Did you mean "OTHER"' after it.
      text = str(e).replace("\\'", "'")
      key = (re.findall(r"[A-Za-z_]\w*", text) or [text])[0]
      near = re.search(r'Did you mean "([\w.]+)"', text)
      given = [a.split("=")[0] for a in argv if a.startswith("--") and key in a.split("=")[0]]
      fail(f"{given[0] if given else key}: the config has no such field ({key!r})"
           + (f"; did you mean {near.group(1)!r}?" if near else ""))
    problems = _config_flag_errors()
    if problems and not _show_traceback(argv):
      fail(problems[0])
    return rest

  def guarded(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      text = errors.message(e, user_errors)
      if text is None or _show_traceback(sys.argv):
        raise
      fail(text)

  _show_in_help(key_modules)
  _quiet_reported_failures()
  app.run(guarded, flags_parser=parse_or_fail)
