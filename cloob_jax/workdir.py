"""A training workdir's own files: config.json (kept when the config changes), metrics.jsonl
and TensorBoard events. The trainer, the fine-tuning loop and the comparison share them.

    workdir.write_config(config, DIR)       # DIR/config.json; a changed one kept as config.K.json
    workdir.config_changes(config, DIR)     # what differs from DIR/config.json (compare refuses)
    writer = workdir.MetricWriter(DIR); writer.write(step, {...}); writer.close()
    workdir.read_metrics(DIR)               # the rows of DIR/metrics.jsonl
"""

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from absl import logging
import jax
import numpy as np

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import paths


def config_changes(config, workdir: str) -> list[str]:
  """The fields in which `config` differs from workdir/config.json ([] if none or no file)."""
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    return []
  try:
    old = json.loads(paths.read_text(path))
  except json.JSONDecodeError:
    return [f"{path} is not valid JSON"]
  return config_lib.config_differences(old, json.loads(config.to_json_best_effort()))


def write_config(config, workdir):
  """Writes workdir/config.json. A workdir resumed under a changed config keeps the old file as
  config.K.json (K = 1, 2, ...) and the differences are printed, not silently overwritten."""
  if jax.process_index() != 0:
    return
  path = paths.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if paths.exists(path):
    changes = config_changes(config, workdir)
    if changes:
      k = 1
      while paths.exists(paths.join(workdir, f"config.{k}.json")):
        k += 1
      kept = paths.join(workdir, f"config.{k}.json")
      paths.rename(path, kept)
      message = (f"{workdir} was written under a different config; the old one is kept as "
                 f"{kept}. Changed: " + "; ".join(changes[:10])
                 + (f"; and {len(changes) - 10} more" if len(changes) > 10 else ""))
      logging.warning(message)
      print("WARNING: " + message, flush=True)
  paths.write_text(path, text)  # atomic: never a half-written config.json


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch whenever it is installed (to accept its tensors), which costs a
  training process ~2 s and hundreds of MB; we write float scalars only. A process that has
  imported torch already keeps it.
  """
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX allows
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """metrics.jsonl + TensorBoard events + console, from process 0 only.

  A local workdir is appended to. An object store (gs://) cannot append, so for a remote
  workdir both files are written to a local mirror and uploaded whole after every write: the
  remote copy is complete up to the last logged step if the host dies. A resumed run first
  downloads the metrics.jsonl it continues.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self._remote = workdir if paths.is_remote(workdir) else None
    local = tempfile.mkdtemp(prefix="cloob_jax_metrics_") if self._remote else workdir
    self._local = local
    jsonl = os.path.join(local, "metrics.jsonl")
    if self._remote and paths.exists(paths.join(self._remote, "metrics.jsonl")):
      paths.download(paths.join(self._remote, "metrics.jsonl"), jsonl)
    self._jsonl = open(jsonl, "ab", buffering=0)
    try:
      self._tb = _summary_writer()(os.path.join(local, "tensorboard"))
    except ImportError:  # TensorBoard events are optional; the JSON lines are not
      self._tb = None

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.active:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    line = (json.dumps(row) + "\n").encode()
    end = os.fstat(self._jsonl.fileno()).st_size
    try:  # unbuffered: each line is on disk when write returns
      written = 0
      while written < len(line):
        written += self._jsonl.write(line[written:])
    except OSError as e:  # a full disk: never leave half a line for a resumed run to extend
      os.ftruncate(self._jsonl.fileno(), end)
      reason = errors.io_reason(e)
      if reason is None:
        raise
      raise errors.UserError(f"could not write the metrics of step {step} to "
                             f"{self._jsonl.name}: {reason}") from e
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()
    self._sync()

  def _sync(self):
    """Uploads the mirror's files to the remote workdir (nothing for a local one)."""
    if not self._remote:
      return
    for directory, _, files in os.walk(self._local):
      for name in files:
        local = os.path.join(directory, name)
        paths.upload(local, paths.join(self._remote, os.path.relpath(local, self._local)))

  def close(self):
    if self.active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
      self._sync()
      if self._remote:
        shutil.rmtree(self._local, ignore_errors=True)


def _scalar(value):
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


def read_metrics(directory: str) -> list[dict[str, Any]]:
  """The rows of directory/metrics.jsonl, in order ([] when there is none)."""
  path = paths.join(directory, "metrics.jsonl")
  if not paths.exists(path):
    return []
  return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]
