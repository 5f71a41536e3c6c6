"""The model a fine-tuning run starts from: a training workdir or a checkpoint file.

    config.init.workdir = 'runs/demo'; config.init.step = None      # the latest checkpoint
    config.init.checkpoint = 'RN50.safetensors'; config.init.model = 'RN50'   # open_clip/OpenAI
    config.init.checkpoint = 'cloob_rn50.pt'     # an original CLOOB checkpoint may name its own
                                                 # architecture: what interop.open_clip reads
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from cloob_jax import config_lib
from cloob_jax import models
from cloob_jax import paths


@dataclasses.dataclass(frozen=True)
class InitModel:
  name: str                      # registry name (models.get_config)
  overrides: dict[str, Any]
  model_config: models.ModelConfig
  module: Any
  variables: dict[str, Any]      # {'params': ..., 'batch_stats': ...} as numpy
  train_config: Any              # the training workdir's config, or None for a file
  step: int | None               # the checkpoint step of a workdir
  source: str                    # where it came from, for logs and export metadata


def check(init) -> None:
  """Refuses an init config that names no model, cheaply (nothing is read)."""
  workdir, file = init.get("workdir") or "", init.get("checkpoint") or ""
  if bool(workdir) == bool(file):
    raise ValueError("give exactly one of config.init.workdir (a training workdir) and "
                     "config.init.checkpoint (an open_clip / OpenAI / CLOOB file)")
  if workdir and init.get("model"):
    raise ValueError("config.init.model goes with config.init.checkpoint; a workdir names its "
                     "own model")
  if file and init.get("step") is not None:
    raise ValueError("config.init.step goes with config.init.workdir")
  paths.check(workdir or file, "config.init.workdir" if workdir else "config.init.checkpoint")
  if file and not paths.exists(file):
    raise FileNotFoundError(f"config.init.checkpoint {file!r} does not exist")


def locate(init) -> tuple[Any, int | None]:
  """(the workdir's train config, the checkpoint step) without reading weights; (None, None)
  for a file. Raises FileNotFoundError for a missing workdir or step."""
  if not init.get("workdir"):
    return None, None
  from cloob_jax import checkpoint  # pylint: disable=g-import-not-at-top
  train_config = checkpoint.load_config(init.workdir)
  return train_config, checkpoint.checkpoint_step(init.workdir, init.get("step"))


def load(init) -> InitModel:
  """Reads the model `config.init` names (as numpy)."""
  check(init)
  train_config, step = locate(init)
  if train_config is not None:
    from cloob_jax import checkpoint  # pylint: disable=g-import-not-at-top
    name = train_config.model.name
    overrides = config_lib.as_dict(train_config.model.get("overrides"))
    # `step` is the latest when none was asked for; a damaged latest one is skipped there.
    _, step, variables = checkpoint.read_variables(init.workdir, init.get("step"))
    source = f"{paths.absolute(init.workdir)} step {step}"
  else:
    from cloob_jax.interop import open_clip  # pylint: disable=g-import-not-at-top
    # An open_clip / OpenAI file needs config.init.model; an original CLOOB checkpoint may name
    # its own architecture (config.init.model, when given, must agree) and uses QuickGELU.
    name, overrides, state_dict = open_clip.read_checkpoint(
        init.checkpoint, init.get("model") or None, what="config.init.model (:model=NAME)",
        allow_torchscript=bool(init.get("allow_torchscript", False)),
        **config_lib.as_dict(init.get("overrides")))
    variables = open_clip.convert_state_dict(state_dict, name, **overrides)
    source = paths.absolute(init.checkpoint)
  model_config = models.get_config(name, **overrides)
  variables = {k: jax.tree.map(lambda x: np.asarray(x), v) for k, v in variables.items() if v}
  variables.setdefault("batch_stats", {})
  return InitModel(name, overrides, model_config, models.build(model_config), variables,
                   train_config, step, source)
