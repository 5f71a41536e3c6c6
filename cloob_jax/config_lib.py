"""Config helpers: `:key=value` args for get_config, and validation before anything runs."""

import difflib
import importlib.util
import os
from typing import Any

import ml_collections

from cloob_jax import errors



def __getattr__(name):
  """`METHODS`: the registered objectives' names, read when first asked for (importing the
  objectives imports jax, which config files should not pay for)."""
  if name == "METHODS":
    from cloob_jax import objectives  # pylint: disable=g-import-not-at-top
    return objectives.names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_dict(value) -> dict[str, Any]:
  """A ConfigDict, a mapping or None -> a plain dict ({} for None)."""
  if value is None:
    return {}
  return value.to_dict() if hasattr(value, "to_dict") else dict(value)


_WARNED = set()  # validate's warnings already shown in this process


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'model=RN50,method=clip' -> ConfigDict over `defaults`, values typed like the defaults.

  Unknown keys are refused with the closest known key, so a typo never trains silently.
  """
  result = ml_collections.ConfigDict(defaults)
  if not arg:
    return result
  for item in arg.split(","):
    if not item:
      continue
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise errors.UserKeyError(f"unknown config arg {key!r}{_suggest(key, defaults)}; "
                                f"known: {', '.join(sorted(defaults))}")
    result[key] = _typed(value if sep else "True", defaults[key], key)
  return result


def _typed(value: str, default: Any, key: str):
  if isinstance(default, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise errors.UserError(f"config arg {key!r} needs true/false, got {value!r}")
    return value.lower() in ("true", "1")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def _suggest(key: str, known) -> str:
  close = difflib.get_close_matches(key, sorted(known), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """'data.caption_mention.colour=0.4' -> sets that existing field, typed like its value.

  What `--config.KEY=VALUE` does for `cloob_jax.main`, for drivers that build several
  configs from one file (`experiments.compare`). Unknown keys are refused with the closest
  known one; only bool, int, float and str fields can be set.
  """
  key, sep, value = item.partition("=")
  if not sep or not key:
    raise errors.UserError(f"config override {item!r} is not KEY=VALUE")
  parts = key.split(".")
  node = config
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = node.keys() if isinstance(node, ml_collections.ConfigDict) else ()
      raise errors.UserKeyError(f"config override {key!r}: the config has no field "
                                f"{'.'.join(parts[:depth + 1])!r}{_suggest(part, known)}")
    if depth < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if not isinstance(old, (bool, int, float, str)):
    raise errors.UserError(f"config override {key!r}: only bool, int, float and str fields can be "
                           f"set this way; this one holds a {type(old).__name__}")
  try:
    node[parts[-1]] = _typed(value, old, key)
  except ValueError as e:
    raise errors.UserError(f"config override {key}={value!r}: expected type "
                           f"{type(old).__name__} ({e})") from None


def check_accum_steps(config: ml_collections.ConfigDict) -> int:
  """config.accum_steps (1 when absent): a positive int that divides config.batch_size, and
  k > 1 only for an objective whose loss reads the embeddings alone (`embeddings_only`).

  Whether the micro-batches split over the devices is checked where the mesh is known
  (`train.create_train_setup`).
  """
  k = config.get("accum_steps", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise errors.UserError(f"config.accum_steps={k!r} must be a positive int (1: no "
                           "accumulation)")
  if config.batch_size % k:
    raise errors.UserError(f"config.accum_steps={k} does not divide config.batch_size="
                           f"{config.batch_size} into equal micro-batches")
  if k > 1:
    from cloob_jax import objectives  # pylint: disable=g-import-not-at-top
    if not objectives.get(config.method).embeddings_only:
      raise errors.UserError(
          f"config.accum_steps={k}: objective {config.method!r} reads more than the batch's "
          "embeddings (embeddings_only=False), so accumulation cannot give its full-batch "
          "gradient; use accum_steps=1")
  return k


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses a config that cannot train, naming the key, before any compile or data read."""
  from cloob_jax import objectives  # pylint: disable=g-import-not-at-top
  methods = objectives.names()
  if config.method not in methods:
    raise errors.UserError(f"config.method={config.method!r}{_suggest(config.method, methods)}; "
                           f"choose one of {methods}")
  for key in ("batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if int(config[key]) <= 0:
      raise errors.UserError(f"config.{key} must be positive, got {config[key]}")
  check_accum_steps(config)
  if config.inv_tau <= 0 or (objectives.get(config.method).needs_beta and config.beta <= 0):
    raise errors.UserError(f"config.inv_tau ({config.inv_tau}) and config.beta ({config.beta}) "
                           "must be positive")
  if config.data.source not in ("synthetic", "records"):
    raise errors.UserError(f"config.data.source={config.data.source!r}; choose 'synthetic' or "
                           "'records'")
  from cloob_jax.data import synthetic  # late, as models below
  if config.data.source == "synthetic" and config.data.get("caption_mention"):
    try:
      synthetic.caption_mention(config.data.caption_mention.to_dict())
    except ValueError as e:
      raise errors.UserError(f"config.data.caption_mention: {e}") from None
  try:
    family_size = synthetic.check_family_size(config.data.get("family_size", 1))
  except ValueError as e:
    raise errors.UserError(f"config.data.{e}") from None
  if family_size > 1 and config.data.source != "synthetic":
    raise errors.UserError(f"config.data.family_size={family_size} needs config.data.source="
                           f"'synthetic' (families are scenes of the synthetic world)")
  if family_size > 1 and config.data.num_workers > 1:
    raise errors.UserError(f"config.data.family_size={family_size} needs "
                           f"config.data.num_workers <= 1 (got {config.data.num_workers}): "
                           "several grain workers would split the families")
  if config.batch_size % family_size:
    raise errors.UserError(f"config.batch_size ({config.batch_size}) is not divisible by "
                           f"config.data.family_size ({family_size})")
  if config.data.source == "records" and not config.data.data_dir:
    raise errors.UserError("config.data.source='records' needs config.data.data_dir (a directory "
                           "written by `python -m cloob_jax.data.convert`)")
  if config.data.source == "records":
    from cloob_jax.data import records  # late, as models below
    records.check_data_dir(config.data.data_dir, config.data.get("cache_dir"))
  if config.optimizer.schedule not in ("cosine", "constant"):
    raise errors.UserError(f"config.optimizer.schedule={config.optimizer.schedule!r}; choose "
                           "'cosine' or 'constant'")
  if config.optimizer.warmup_steps >= config.total_steps:
    # Allowed (short runs of a long config): the schedule warms up linearly for the whole run.
    from absl import logging
    message = (f"config.optimizer.warmup_steps ({config.optimizer.warmup_steps}) >= "
               f"config.total_steps ({config.total_steps}): the learning rate warms up "
               f"linearly for the whole run and never reaches config.optimizer.lr "
               f"({config.optimizer.lr})")
    if message not in _WARNED:  # main validates before start-up, the trainer again
      _WARNED.add(message)
      logging.warning(message)
      print("WARNING: " + message, flush=True)
  from cloob_jax import models  # late: keeps `configs/*.py` imports light
  models.get_config(config.model.name, **config.model.overrides.to_dict())


def load_module(path: str):
  """A config file (or any Python file) by path, as a module: what `--config` files are."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str, **args) -> ml_collections.ConfigDict:
  """'configs/demo.py[:a=1,b=2]' plus keyword args -> the file's get_config(merged args).

  For notebooks and drivers that build configs outside absl's --config flag. An arg given
  both in `spec` and as a keyword is refused rather than silently overridden.
  """
  path, _, given = spec.partition(":")
  module = load_module(path)
  items = [item for item in given.split(",") if item]
  clash = {item.partition("=")[0] for item in items} & set(args)
  if clash:
    raise errors.UserError(f"{spec!r} sets {sorted(clash)}, which the caller sets too")
  items += [f"{k}={v}" for k, v in args.items()]
  return module.get_config(",".join(items))


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Fields where two JSON-like configs (nested dicts) differ, as 'key: old -> new', sorted."""
  if isinstance(old, dict) and isinstance(new, dict):
    found = []
    for key in sorted(set(old) | set(new)):
      name = f"{prefix}.{key}" if prefix else key
      if key not in old or key not in new:
        found.append(f"{name}: {'missing' if key not in old else repr(old[key])} -> "
                     f"{'missing' if key not in new else repr(new[key])}")
      else:
        found += config_differences(old[key], new[key], name)
    return found
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]
