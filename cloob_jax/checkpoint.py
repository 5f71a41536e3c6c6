"""Orbax checkpoints holding the train state and the grain iterator state together.

Layout: `WORKDIR/checkpoints/STEP/{state,data}`; orbax writes each step to a temporary
directory and renames it when complete, so a killed run never leaves a half-written step.
"""

import json

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cloob_jax import paths


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


class Checkpointer:
  """Saves every `every` steps (asynchronously), keeps the last `keep`, restores the latest."""

  def __init__(self, directory: str, *, every: int, keep: int):
    self.directory = paths.absolute(directory)
    self.every = every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                             enable_async_checkpointing=True),
        item_names=("state", "data"))
    self._last_saved = self._manager.latest_step()

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
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=grain.checkpoint.CheckpointSave(data_iterator)),
        force=force)

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores `step` into the shapes/shardings of `abstract_state`; the iterator in place."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
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


def checkpoint_step(workdir: str, step: int | None = None) -> int:
  """The step of `workdir`'s checkpoint to read: `step` if it exists, else the latest."""
  directory = paths.join(paths.absolute(workdir), "checkpoints")
  steps = []
  if paths.exists(directory):
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state", "data"))
    steps = sorted(manager.all_steps())
    manager.close()
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} under {directory}; have {steps}")
  return step


def restore_variables(workdir: str, step: int | None = None):
  """A training workdir -> (train config, {'params': ..., 'batch_stats': ...}) as numpy.

  `step=None` takes the latest checkpoint. For evaluation, export and fine-tuning: only the
  parameters and batch statistics are read, as whole numpy arrays, whatever mesh and process
  count saved them (a run saved on a pod restores on one host and the other way round). No
  optimizer state and no data iterator are read.
  """
  config = load_config(workdir)
  step = checkpoint_step(workdir, step)
  item = paths.path(paths.join(paths.absolute(workdir), "checkpoints", str(step), "state"))
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(item)
  saved = getattr(saved, "item_metadata", saved)
  saved = getattr(saved, "tree", saved)
  wanted = {k: saved[k] for k in ("params", "batch_stats") if saved.get(k)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True))
  return config, {k: jax.tree.map(np.asarray, restored[k]) for k in wanted}
