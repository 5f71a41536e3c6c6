"""A dead or hung process of a multi-process run: the others exit in one line, in bounded time.

Without this, when one process dies the others wait for the coordination service's heartbeat
timeout (~100 s) in jax's exit-time shutdown barrier and are then aborted with screens of C++
log; when one hangs (SIGSTOP, a stuck host) they wait in its collective as long. Here:

- a collective that fails because a peer closed its sockets (gloo: "Connection closed by
  peer") is caught by the train loop, which calls `fail` (well under a second);
- liveness: a thread publishes a counter under `cloob_jax/alive/<i>` in the coordination
  service's key-value store every `interval` s and reads everyone's. A peer whose counter has
  not moved for `peer_timeout` s is dead or frozen, whatever the run is doing (compiling,
  evaluating, saving); our own round trip not returning for `peer_timeout` s means process 0,
  which hosts the service, is frozen;
- a step deadline: every process alive, yet no step finished for `step_timeout` s outside
  `exempt()` phases (evals, saves) after the first step (the compile): a hung collective.

`fail` prints one line (`error: ...`, the step the run can resume from), tells the other
processes through the store, and leaves with `os._exit(EXIT_CODE)`: no exit-time shutdown,
which would wait for the dead peer. When process 0 itself dies, jax's own client aborts the
others at once (its C++ log, not this line): that path is not Python's to take.

    distributed.initialize(...)   # starts it in a multi-process run (`start`)
    peerwatch.set_resume_step(fn) # the trainer: the last complete checkpoint's step
    peerwatch.beat()              # after each step;  `with peerwatch.exempt():` around evals/saves
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from typing import Callable

EXIT_CODE = 3
_FAILED = "cloob_jax/failed"
_ALIVE = "cloob_jax/alive/"
_DONE = "done"
# How a collective or the coordination client words a peer that went away.
_PEER_GONE = ("Gloo", "Connection closed by peer", "Connection reset by peer", "UNAVAILABLE",
              "Socket closed", "DEADLINE_EXCEEDED", "heartbeat", "coordination service")


class PeerWatchdog:
  """The threads and state above; one per process (`start`)."""

  def __init__(self, client, process_index: int, process_count: int, *,
               peer_timeout: float = 60.0, step_timeout: float = 600.0, interval: float = 2.0):
    self._client, self._me, self._n = client, process_index, process_count
    self.peer_timeout, self.step_timeout, self._interval = peer_timeout, step_timeout, interval
    self.resume_step: Callable[[], int | None] = lambda: None
    now = time.monotonic()
    self._progress = now  # the last beat(), or the end of an exempt phase
    self._armed = False   # the step deadline starts after the first beat (the compile)
    self._exempt = 0
    self._kv_ok = now     # when our own round trip to the store last returned
    self._seen = {p: (None, now) for p in range(process_count) if p != process_index}
    self._stopped = threading.Event()
    self._said_done = threading.Event()
    self._alive_key = threading.Lock()  # our alive key: a counter, then `_DONE` once
    self._exiting = threading.Lock()

  def start(self) -> PeerWatchdog:
    # All threads start here: `stop` runs at interpreter exit, where Python 3.12 refuses new ones.
    for target in (self._watch, self._publish, self._farewell):
      threading.Thread(target=target, daemon=True, name=f"peerwatch{target.__name__}").start()
    return self

  def stop(self):
    """Before a normal exit (jax's shutdown then closes the store): the others stop watching
    this process, which may wait for them in that shutdown longer than `peer_timeout`."""
    if self._stopped.is_set():
      return
    self._stopped.set()
    self._said_done.wait(2.0)  # a frozen coordinator never answers

  def _farewell(self):
    """After `stop`: marks this process done in the store (`_publish` no longer writes)."""
    self._stopped.wait()
    try:
      with self._alive_key:
        self._client.key_value_set(f"{_ALIVE}{self._me}", _DONE, True)
    except Exception:  # pylint: disable=broad-except  the store is gone: nothing to tell
      pass
    self._said_done.set()

  def beat(self):
    self._progress, self._armed = time.monotonic(), True

  @contextlib.contextmanager
  def exempt(self):
    self._exempt += 1
    try:
      yield
    finally:
      self._exempt -= 1
      self._progress = time.monotonic()

  def fail(self, reason: str):
    """Prints one line, tells the other processes, exits. Never returns."""
    if not self._exiting.acquire(blocking=False):
      time.sleep(3600)  # another thread is already exiting
    try:
      step = self.resume_step()
    except Exception:  # pylint: disable=broad-except
      step = None
    where = (f"resume from the checkpoint of step {step}" if step is not None else
             "start over (no checkpoint yet)")
    print(f"error: {reason}; process {self._me} of {self._n} exits. Re-run the same command "
          f"to {where}.", file=sys.stderr, flush=True)
    if not reason.startswith("process "):  # the first to notice tells the others
      announce = threading.Thread(target=self._client.key_value_set, daemon=True,
                                  args=(_FAILED, f"process {self._me}: {reason}", True))
      announce.start()
      announce.join(2.0)  # a frozen coordinator never answers
      if self._me == 0 and self._n > 2:  # keep the service up while the others read it
        time.sleep(2 * self._interval + 1)
    os._exit(EXIT_CODE)

  def _publish(self):
    count = 0
    while not self._stopped.is_set():
      count += 1
      try:
        with self._alive_key:
          if self._stopped.is_set():
            break
          self._client.key_value_set(f"{_ALIVE}{self._me}", f"{count}:{int(self._exempt > 0)}",
                                     allow_overwrite=True)
        entries = self._client.key_value_dir_get(_ALIVE)
        try:
          failed = self._client.key_value_try_get(_FAILED)
        except Exception:  # pylint: disable=broad-except  NOT_FOUND: nobody failed
          failed = None
      except Exception:  # pylint: disable=broad-except  the coordinator: _watch decides
        self._stopped.wait(self._interval)
        continue
      now = time.monotonic()
      self._kv_ok = now
      for key, value in entries:
        p = int(key.rsplit("/", 1)[1])
        if value == _DONE:  # exited normally: nothing more to watch
          self._seen.pop(p, None)
        elif p in self._seen and self._seen[p][0] != value:
          self._seen[p] = (value, now)
        if value.endswith(":1"):  # a peer in an eval or a save: we may be waiting for it
          self._progress = now
      if failed and not self._stopped.is_set():
        self.fail(failed)
      self._stopped.wait(self._interval)

  def _watch(self):
    while not self._stopped.wait(0.5):
      now, t = time.monotonic(), self.peer_timeout
      if self._me != 0 and now - self._kv_ok > t:
        self.fail(f"process 0 (the coordinator) has not answered for {now - self._kv_ok:.0f} s:"
                  " it died or hangs")
      stale = [p for p, (_, changed) in list(self._seen.items()) if now - changed > t]
      if stale:
        self.fail(f"process {', '.join(map(str, stale))} gave no sign of life for {t:.0f} s: "
                  "it died or hangs")
      if self._armed and not self._exempt and now - self._progress > self.step_timeout:
        self.fail(f"no step finished for {now - self._progress:.0f} s with every process "
                  "alive: a collective hangs")


def peer_failure(e: BaseException) -> str | None:
  """One line when an exception from a step or a save means another process went away."""
  text = " ".join(str(e).split())
  if any(marker in text for marker in _PEER_GONE):
    return f"another process stopped (a collective failed: {text[:160]})"
  return None


_current: PeerWatchdog | None = None


def start(peer_timeout: float, step_timeout: float) -> PeerWatchdog | None:
  """After jax.distributed.initialize, in a run of several processes; else nothing."""
  global _current
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  if jax.process_count() < 2 or client is None:
    return None
  _current = PeerWatchdog(client, jax.process_index(), jax.process_count(),
                          peer_timeout=peer_timeout, step_timeout=step_timeout).start()
  atexit.register(_current.stop)  # runs before jax's shutdown (registered earlier)
  return _current


def set_resume_step(fn: Callable[[], int | None]):
  if _current is not None:
    _current.resume_step = fn


def beat():
  if _current is not None:
    _current.beat()


def fail_if_peer_gone(e: BaseException):
  """In a multi-process run, an exception that says a peer went away ends the process here."""
  reason = peer_failure(e) if _current is not None else None
  if reason is not None:
    _current.fail(reason)


@contextlib.contextmanager
def exempt():
  if _current is None:
    yield
  else:
    with _current.exempt():
      yield
