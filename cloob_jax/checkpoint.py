"""Orbax checkpoints holding the train state and the grain iterator state together.

Layout: `WORKDIR/checkpoints/STEP/{state,data}`; orbax writes each step to a temporary
directory and renames it when complete, so a killed run never leaves a half-written step.

Faults:
- A step whose files cannot be read back (truncated or missing array files, unreadable
  metadata, a corrupt iterator state) is *damaged*: resuming reports it in one line, moves it
  aside to `STEP.damaged` (never deletes it) and takes the previous step; with no intact step
  left it refuses to start over unless asked (`DamagedCheckpointError`). The eval, export and
  fine-tuning readers (`restore_variables`) skip a damaged latest step the same way and refuse
  a damaged step that was asked for by number.
- A save that fails on a full disk, a quota or a permission raises `CheckpointSaveError`
  naming the step, the directory and the reason; orbax's temporary directory of that step is
  removed on the next start, and the earlier steps stay as they were.
"""

import contextlib
import json
import re
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cloob_jax import errors
from cloob_jax import paths

DAMAGED_SUFFIX = ".damaged"


def all_finite(tree) -> bool:
  """True when every floating leaf of `tree` is finite (one fused device reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  if not leaves:
    return True
  return bool(_all_finite(leaves))


@jax.jit
def _all_finite(leaves):
  # Module-level so each save reuses one compiled check instead of tracing a new lambda.
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class NonFiniteError(RuntimeError):
  pass


class DamagedCheckpointError(errors.UserError):
  """A checkpoint step that cannot be read back, or no intact step left."""


class CheckpointSaveError(errors.UserError):
  """A save that failed for a reason the user can fix (a full disk, a quota, a permission)."""


# How tensorstore, orbax and grain word a file that is not what was written.
_DAMAGE = re.compile(r"DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|Error reading|Error decoding|"
                     r"error while reading|corrupt|checksum|unexpected end|truncated", re.I)


def damage(e: BaseException) -> str | None:
  """What a failed read says about a checkpoint's files, in one line; None when the failure
  is not damage (a bug, or a checkpoint of another model: those keep their traceback)."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  if not any(isinstance(c, (json.JSONDecodeError, FileNotFoundError, EOFError,
                            UnicodeDecodeError)) or _DAMAGE.search(str(c)) for c in chain):
    return None
  # The innermost cause says what was wrong; tensorstore nests its context with ': '.
  text = " ".join(str(chain[-1]).split()).split(" [tensorstore_spec=")[0]
  status = re.match(r"[A-Z_]{6,}: ", text)
  reason = status.group(0) + text.split(": ")[-1] if status else text
  if isinstance(chain[-1], json.JSONDecodeError):
    reason = f"a JSON file (the data iterator's state?) does not parse: {text}"
  everything = " ".join(str(c) for c in chain)
  files = re.findall(r'local file "([^"]+)"', everything)
  arrays = re.findall(r'Error reading "([^"/]+)', everything)
  where = files[-1] if files else getattr(chain[-1], "filename", None)
  return (f"{where}: " if where else "") + (f"array {arrays[0]}: " if arrays else "") + (
      reason[:300] or type(chain[-1]).__name__)


def _tree_metadata(item):
  """The saved tree's metadata of a `state` directory; raises DamagedCheckpointError if none."""
  saved = ocp.PyTreeCheckpointHandler().metadata(item)  # FileNotFoundError without _METADATA
  saved = getattr(saved, "tree", saved)
  if not saved:
    raise DamagedCheckpointError(f"{item}: the array metadata (_METADATA) is missing or "
                                 "unreadable")
  return saved


def _check_data_state(step_dir):
  """Every process's data-iterator state (STEP/data/*.json) must parse."""
  for f in paths.path(step_dir).glob("data/*.json"):
    try:
      json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DamagedCheckpointError(f"{f}: the data iterator's state does not parse "
                                   f"({' '.join(str(e).split())})") from e


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (each reads its own share of the arrays)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _warn(text: str):
  print(f"WARNING: {text}", file=sys.stderr, flush=True)


class Checkpointer:
  """Saves every `every` steps (asynchronously), keeps the last `keep`, restores the latest."""

  def __init__(self, directory: str, *, every: int, keep: int):
    self.directory = paths.absolute(directory)
    self.every = every
    # cleanup_tmp_directories: a save that died (a full disk, a kill) leaves orbax's
    # STEP.orbax-checkpoint-tmp-* behind; it is removed here and never read as a step.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                             enable_async_checkpointing=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "data"))
    self._last_saved = self._manager.latest_step()
    self._in_flight = None  # the step of the last save started (orbax writes it in the background)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    """Saves when `step` is due (or `force`); refuses state with non-finite values."""
    # Decided locally: asking the manager (should_save, latest_step) syncs all processes.
    if not force and step % self.every:
      return False
    if step == self._last_saved:
      return False  # already saved (e.g. a periodic save just before a preemption)
    if not all_finite(state):
      raise NonFiniteError(f"refusing to checkpoint step {step}: the train state holds "
                           "non-finite values")
    self._last_saved = step
    with self._save_errors(step):  # also the previous step's background write, finished here
      saved = self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=grain.checkpoint.CheckpointSave(data_iterator)),
          force=force)
      self._in_flight = step
    return saved

  @contextlib.contextmanager
  def _save_errors(self, step: int):
    """A full disk, a quota or a permission -> CheckpointSaveError naming step, path, reason."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      reason = errors.io_reason(e)
      if reason is None:
        raise
      failed = self._in_flight if self._in_flight not in (None, step) else step
      raise CheckpointSaveError(
          f"could not save the checkpoint of step {failed} in {self.directory}: {reason}. "
          f"The earlier checkpoints are intact (latest: {self._manager.latest_step()}); fix "
          "that and re-run to resume.") from e

  def all_steps(self) -> list[int]:
    return sorted(int(s) for s in self._manager.all_steps())

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores `step` into the shapes/shardings of `abstract_state`; the iterator in place."""
    _check_data_state(paths.join(self.directory, str(step)))
    _tree_metadata(paths.path(paths.join(self.directory, str(step), "state")))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def restore_latest(self, abstract_state, data_iterator, *, allow_none: bool = False):
    """-> (step, state) from the newest intact step, or (None, None) when there is no step.

    A damaged step (`damage`) is reported in one line, moved aside to `STEP.damaged` and
    the previous one tried; every process must read its step intact for it to count. With
    steps but none intact, raises DamagedCheckpointError unless `allow_none`. The iterator
    is restored in place with the state it returns.
    """
    steps = self.all_steps()
    moved = []
    for step in reversed(steps):
      problem = None
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except DamagedCheckpointError as e:
        problem = str(e)
      except Exception as e:  # pylint: disable=broad-except
        problem = damage(e)
        if problem is None:
          raise
      if _all_processes_agree(problem is None):
        return step, state
      moved.append(self._move_aside(step, problem or "damaged on another process"))
    if moved and not allow_none:
      raise DamagedCheckpointError(
          f"no intact checkpoint in {self.directory}: steps {', '.join(map(str, steps))} are "
          f"damaged (moved aside to {', '.join(moved)}). Re-run with --restart_from_scratch to "
          "train from step 0 in this workdir.")
    return None, None

  def _move_aside(self, step: int, problem: str) -> str:
    """Renames a damaged step (process 0; the others wait) so orbax no longer lists it."""
    source = paths.join(self.directory, str(step))
    target = source + DAMAGED_SUFFIX
    k = 1
    while paths.exists(target):
      target = f"{source}{DAMAGED_SUFFIX}.{k}"
      k += 1
    _warn(f"the checkpoint of step {step} is damaged ({problem}); moved it to {target} and "
          "trying the previous step")
    if jax.process_index() == 0:
      paths.move_dir(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"cloob_jax:moved_aside:{step}")
    self._manager.reload()
    self._last_saved = self._manager.latest_step()
    return target

  def close(self):
    with self._save_errors(self._in_flight or 0):
      self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) describing `tree`, the target of a restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = paths.join(paths.check(workdir, "workdir"), "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps saved in `workdir` (damaged ones moved aside not included), oldest first."""
  directory = paths.join(paths.absolute(workdir), "checkpoints")
  steps = []
  if paths.exists(directory):
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state", "data"))
    steps = sorted(manager.all_steps())
    manager.close()
  return steps


def checkpoint_step(workdir: str, step: int | None = None) -> int:
  """The step of `workdir`'s checkpoint to read: `step` if it exists, else the latest."""
  directory = paths.join(paths.absolute(workdir), "checkpoints")
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} under {directory}; have {steps}")
  return step


def restore_variables(workdir: str, step: int | None = None):
  """A training workdir -> (train config, {'params': ..., 'batch_stats': ...}) as numpy.

  As `read_variables`, without the step it read.
  """
  config, _, variables = read_variables(workdir, step)
  return config, variables


def read_variables(workdir: str, step: int | None = None):
  """A training workdir -> (train config, step read, {'params': ..., 'batch_stats': ...}).

  `step=None` takes the latest checkpoint that reads back intact: a damaged one is reported
  in one line and skipped (left where it is: training moves it aside when it resumes). A
  damaged `step` asked for by number raises DamagedCheckpointError. For evaluation, export
  and fine-tuning: only the parameters and batch statistics are read, as whole numpy arrays,
  whatever mesh and process count saved them (a run saved on a pod restores on one host and
  the other way round). No optimizer state and no data iterator are read.
  """
  config = load_config(workdir)
  candidates = [checkpoint_step(workdir, step)] if step is not None else (
      list(reversed(checkpoint_steps(workdir))) or [checkpoint_step(workdir)])
  problems = []
  for candidate in candidates:
    try:
      return config, candidate, _read_variables(workdir, candidate)
    except Exception as e:  # pylint: disable=broad-except
      problem = str(e) if isinstance(e, DamagedCheckpointError) else damage(e)
      if problem is None:
        raise
      if step is not None:
        raise DamagedCheckpointError(f"the checkpoint of step {step} is damaged: {problem}") from e
      _warn(f"the checkpoint of step {candidate} is damaged ({problem}); trying the previous "
            "step")
      problems.append(str(candidate))
  raise DamagedCheckpointError(f"no intact checkpoint in {paths.join(workdir, 'checkpoints')}:"
                               f" steps {', '.join(problems)} are damaged")


def _read_variables(workdir: str, step: int):
  item = paths.path(paths.join(paths.absolute(workdir), "checkpoints", str(step), "state"))
  saved = _tree_metadata(item)
  wanted = {k: saved[k] for k in ("params", "batch_stats") if saved.get(k)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = ocp.PyTreeCheckpointer().restore(item, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True))
  return {k: jax.tree.map(np.asarray, restored[k]) for k in wanted}
