"""What every format records about the model it holds: config, method, 1/tau, beta, step,
source and the exporting code's git commit."""

from __future__ import annotations

import os
import subprocess
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_commit() -> dict[str, Any]:
  """{'git_commit': HEAD, 'git_dirty': bool} of the checkout this package runs from, or Nones
  (an installed package, no git)."""
  unknown = {"git_commit": None, "git_dirty": None}
  if not os.path.exists(os.path.join(_ROOT, ".git")):
    return unknown
  try:
    head = subprocess.run(["git", "-C", _ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=20, check=True).stdout.strip()
    status = subprocess.run(["git", "-C", _ROOT, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=20, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return unknown
  return {"git_commit": head, "git_dirty": bool(status.strip())}


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def metadata(name: str, overrides: dict, config, variables, *, fmt: str, source: str,
             train_config=None, step: int | None = None) -> dict[str, Any]:
  """The record for a model `name` (+ `overrides`) exported to `fmt` from `source`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cloob_jax import losses  # pylint: disable=g-import-not-at-top
  log_inv_tau = float(np.asarray(variables["params"]["logit_scale"]))
  get = (lambda k: train_config.get(k)) if train_config is not None else (lambda k: None)
  return {
      "exported_by": "cloob_jax.export",
      "format": fmt,
      "model": name,
      "model_overrides": _jsonable(overrides),
      "model_config": _jsonable(config.as_dict()),
      "quick_gelu": bool(config.quick_gelu),
      "method": get("method"),
      "logit_scale": log_inv_tau,
      "inv_tau": float(np.asarray(losses.inv_tau_from_log(log_inv_tau))),
      "learn_inv_tau": get("learn_inv_tau"),
      "beta": get("beta"),
      "step": step,
      "source": source,
      **git_commit(),
  }
