"""Preemption: SIGTERM / SIGINT become a flag that every process agrees on, then one save.

    stop = preemption.StopFlag().install()
    batch["stop"] = ...stop.signal is not None...   # through the step: the max over processes
    if stop_agreed:
      preemption.save_and_exit_line(stop, ckpt, step, state, data); break

The trainer and the fine-tuning loop share it.
"""

import signal
import threading


class StopFlag:
  """Set by SIGTERM/SIGINT. The flag travels through the train step to every process; all of
  them then save a checkpoint of the same step, one or two steps later, and exit."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def install(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def save_and_exit_line(stop: StopFlag, ckpt, step: int, state, data_iterator):
  """Saves `step` (every process the same one) and says why the run stops there."""
  ckpt.save(step, state, data_iterator, force=True)
  print(f"{stop.signal or 'A stop signal to another process'}: saved the checkpoint of "
        f"step {step}; exiting", flush=True)
