"""The training loop: sharded state init, one jitted train step, checkpoints, logging, evals.

The global batch is one `jax.Array` sharded over the mesh's 'data' axis. The towers run in
the global view (XLA keeps each device on its own rows; BatchNorm reduces over the global
batch); the objective gathers the embeddings on purpose (`parallel.make_loss_fn`), so each
device holds only its [local, global] block of each score matrix.
"""

import dataclasses
import functools
import math
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cloob_jax import checkpoint
from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import losses
from cloob_jax import models
from cloob_jax import objectives
from cloob_jax import optim
from cloob_jax import parallel
from cloob_jax import paths
from cloob_jax import peerwatch
from cloob_jax import preemption
from cloob_jax import workdir as workdir_lib
from cloob_jax.data import pipeline
from cloob_jax.data import records
from cloob_jax.models import inputs
from cloob_jax.models import layers

STOP = "stop_requested"  # the train step's metric: 1 when any process was asked to stop


def create_source(config: ml_collections.ConfigDict, image_size: int):
  if config.data.source == "synthetic":
    from cloob_jax.data import synthetic
    mention = config.data.get("caption_mention")
    return synthetic.SyntheticWorld(split="train", seed=config.data.seed, image_size=image_size,
                                    mention=mention.to_dict() if mention else None,
                                    family_size=config.data.get("family_size", 1))
  return records.ImageTextSource(records.local_data_dir(config.data.data_dir,
                                                       config.data.get("cache_dir")))


def create_train_iterator(config, model_config, process_index=None, process_count=None):
  source = create_source(config, model_config.vision.image_size)
  return pipeline.create_train_iterator(
      source, global_batch_size=config.batch_size, image_size=model_config.vision.image_size,
      context_length=model_config.text.context_length, seed=config.data.seed,
      process_index=process_index, process_count=process_count,
      num_workers=config.data.num_workers)


def _close(data) -> None:
  """Stops a train iterator's worker processes (config.data.num_workers > 0), if any."""
  close = getattr(data, "close", None)
  if close is not None:
    close()


def init_state(model, tx, config, model_config, rng):
  """-> {'step', 'params', 'batch_stats', 'opt_state'}; the temperature starts at config.inv_tau.

  The objective's learnt scalars (objectives.Objective.scalars: log 1/tau in 'logit_scale',
  SigLIP's bias in 'logit_bias') are params, each at its declared initial value.
  """
  size, context = model_config.vision.image_size, model_config.text.context_length
  variables = model.init(rng, jnp.zeros((1, size, size, 3)), jnp.zeros((1, context), jnp.int32))
  params = dict(variables["params"])
  for scalar in objectives.get(config.method).scalars:
    params[scalar.param] = jnp.asarray(scalar.init(config), jnp.float32)
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(params)}


def mean_cosine(embeddings: jax.Array) -> jax.Array:
  """Mean cosine between distinct rows of L2-normalised [n, d] embeddings (the global batch).

  (|sum of rows|^2 - n) / (n (n - 1)): no n x n matrix. Near 1 the embeddings have collapsed
  onto one direction; random directions in d dimensions give about 0.
  """
  n = embeddings.shape[0]
  total = jnp.sum(embeddings.astype(jnp.float32), axis=0)
  return (jnp.sum(total * total) - n) / (n * (n - 1))


def _objective_loss(params, img, txt, *, loss_fn, config, objective):
  """(loss, 1/tau) of [B, d] embeddings, the objective's learnt scalars read from `params`."""
  log_inv_tau = params["logit_scale"]
  if not config.learn_inv_tau:
    log_inv_tau = jax.lax.stop_gradient(log_inv_tau)
  inv_tau = losses.inv_tau_from_log(log_inv_tau)
  extra = {s.name: s.transform(params[s.param]) for s in objective.extra_scalars}
  return loss_fn(img, txt, inv_tau, config.beta, **extra), inv_tau


def accum_steps(config: ml_collections.ConfigDict) -> int:
  """config.accum_steps, 1 for configs written before it existed."""
  return int(config.get("accum_steps", 1))


def _micro_batches(array, k, sharding):
  """[B, ...] -> [k, B/k, ...]: micro-batch j holds rows j, j + k, j + 2k, ... Each device
  keeps its own rows (B/k splits over the devices), so the split moves no data."""
  stacked = jnp.moveaxis(array.reshape(array.shape[0] // k, k, *array.shape[1:]), 1, 0)
  if sharding is not None:
    stacked = jax.lax.with_sharding_constraint(
        stacked, jax.NamedSharding(sharding.mesh, jax.P(None, *sharding.spec)))
  return stacked


def _global_rows(stacked):
  """The inverse of `_micro_batches`: [k, B/k, ...] -> [B, ...] in the batch's row order."""
  return jnp.moveaxis(stacked, 0, 1).reshape(-1, *stacked.shape[2:])


def _accumulated_value_and_grad(params, batch_stats, batch, *, model, loss_fn, config,
                                objective, sharding, rngs=None, stats_fn=None):
  """The full-batch loss and its exact gradient at the activation memory of a micro-batch.

  Full-batch (GradCache-style) accumulation over k = config.accum_steps micro-batches:
    1. embed each micro-batch without keeping activations (a scan, no gradient);
    2. take the loss of all B embeddings (the same `loss_fn` as k = 1: every negative and the
       whole Hopfield memory of the global batch) and its gradient w.r.t. the embeddings and
       the learnt scalars;
    3. run each micro-batch forward again and pull its rows of those gradients back through
       the towers (a VJP), summing the parameter gradients.
  BatchNorm towers normalise each micro-batch with its own statistics (as open_clip's
  --accum-freq), and the running statistics are updated once per micro-batch, in step 1; in
  train mode the outputs do not read the running statistics, so step 3 sees the same function.
  `rngs` ({name: key}, e.g. patch dropout's) are folded with the micro-batch's index, the same
  in steps 1 and 3, so both passes of a micro-batch draw the same tokens.
  config.accum_unroll (absent: False) unrolls both loops over the micro-batches, each
  micro-batch's second forward kept apart from its first by an optimization barrier: the same
  work, for XLA's cost analysis, which counts a loop's body once (bench train's FLOPs).

  Returns:
    (loss, (batch_stats, inv_tau, image_mean_cosine, text_mean_cosine, retrieval stats)),
    grads: as `jax.value_and_grad(..., has_aux=True)` of the k = 1 step.
  """
  k = accum_steps(config)
  images = _micro_batches(batch["image"], k, sharding)
  tokens = _micro_batches(batch["tokens"], k, sharding)
  index = jnp.arange(k)  # folded into the micro-batch's rngs

  def embed(params, batch_stats, images, tokens, j):
    """Micro-batch j: ([B/k, d] image and text embeddings, updated batch statistics)."""
    (img, txt), updates = model.apply(
        models.variables(params, batch_stats), inputs.normalize(images), tokens, train=True,
        mutable=["batch_stats"],
        rngs={name: jax.random.fold_in(key, j) for name, key in (rngs or {}).items()})
    return (img, txt), updates.get("batch_stats", {})

  def embed_step(batch_stats, xs):
    embeddings, batch_stats = embed(params, batch_stats, *xs)
    return batch_stats, embeddings

  unroll = k if config.get("accum_unroll", False) else 1
  new_batch_stats, (img, txt) = jax.lax.scan(embed_step, batch_stats, (images, tokens, index),
                                             unroll=unroll)
  img, txt = _global_rows(img), _global_rows(txt)

  loss_of_embeddings = functools.partial(_objective_loss, loss_fn=loss_fn, config=config,
                                         objective=objective)
  (loss, inv_tau), (scalar_grads, img_grads, txt_grads) = jax.value_and_grad(
      loss_of_embeddings, argnums=(0, 1, 2), has_aux=True)(params, img, txt)

  def pull_back(grads, xs):
    images, tokens, j, img_grad, txt_grad = xs
    if unroll > 1:  # unrolled, XLA would merge this forward with step 1's (the same values)
      images, tokens = jax.lax.optimization_barrier((images, tokens))
    _, vjp = jax.vjp(lambda p: embed(p, batch_stats, images, tokens, j)[0], params)
    (tower_grads,) = vjp((img_grad, txt_grad))
    return jax.tree.map(jnp.add, grads, tower_grads), None

  # The scalars' gradients start the sum: the towers' VJPs add zero to them.
  grads, _ = jax.lax.scan(pull_back, scalar_grads, (
      images, tokens, index, _micro_batches(img_grads, k, sharding),
      _micro_batches(txt_grads, k, sharding)), unroll=unroll)
  return (loss, (new_batch_stats, inv_tau, mean_cosine(img), mean_cosine(txt),
                 _retrieval_stats(stats_fn, img, txt, config))), grads


def _retrieval_stats(stats_fn, img, txt, config) -> dict[str, Any]:
  """The Hopfield retrieval's statistics of this batch (none for objectives without one)."""
  return stats_fn(img, txt, config.beta) if stats_fn is not None else {}


def train_step(state, batch, *, model, tx, schedule, loss_fn, config, batch_sharding=None,
               stats_fn=None):
  """One optimizer step on a global batch {'image': uint8 [B,S,S,3], 'tokens': int32 [B,L]}.

  An optional 'stop' int32 [B] (each process fills its rows with its own stop flag) comes back
  as metrics[STOP], its maximum over all processes, so that every process sees the same value.
  With config.accum_steps = k > 1 the gradient is the same full-batch gradient, computed over
  k micro-batches of B/k rows (`_accumulated_value_and_grad`); `batch_sharding`, the batch's
  sharding, keeps each micro-batch split over the same devices. `stats_fn`
  (parallel.make_retrieval_stats_fn), for objectives with a Hopfield retrieval, adds its
  statistics of the batch's embeddings to the metrics (objectives/diagnostics.py).
  """
  images = inputs.normalize(batch["image"])
  objective = objectives.get(config.method)

  # Patch dropout's draw (models/vit.py): a pure function of the seed and the step, so a
  # resumed run draws what the uninterrupted one did.
  rngs = {"dropout": jax.random.fold_in(jax.random.key(config.get("seed", 0)), state["step"])}

  def compute_loss(params):
    variables = models.variables(params, state["batch_stats"])
    (img, txt), updates = model.apply(variables, images, batch["tokens"], train=True,
                                         mutable=["batch_stats"], rngs=rngs)
    loss, inv_tau = _objective_loss(params, img, txt, loss_fn=loss_fn, config=config,
                                    objective=objective)
    return loss, (updates.get("batch_stats", {}), inv_tau, mean_cosine(img), mean_cosine(txt),
                  _retrieval_stats(stats_fn, img, txt, config))

  if accum_steps(config) == 1:
    (loss, (batch_stats, inv_tau, image_cos, text_cos, stats)), grads = jax.value_and_grad(
        compute_loss, has_aux=True)(state["params"])
  else:
    (loss, (batch_stats, inv_tau, image_cos, text_cos, stats)), grads = (
        _accumulated_value_and_grad(
            state["params"], state["batch_stats"], batch, model=model, loss_fn=loss_fn,
            config=config, objective=objective, sharding=batch_sharding, rngs=rngs,
            stats_fn=stats_fn))
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  for scalar in objective.scalars:  # each in its declared range ([0, log 100] for log 1/tau)
    if scalar.low is not None or scalar.high is not None:
      params[scalar.param] = jnp.clip(params[scalar.param], scalar.low, scalar.high)
  metrics = {"loss": loss, "inv_tau": inv_tau, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state["step"]), "image_mean_cosine": image_cos,
             "text_mean_cosine": text_cos,
             **{s.name: params[s.param] for s in objective.extra_scalars}, **stats}
  if "stop" in batch:  # int32 [B], each process's rows hold its own flag: did any ask to stop?
    metrics[STOP] = jnp.max(batch["stop"])
  new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
               "opt_state": opt_state}
  return new_state, metrics


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything the loop (and the train benchmark) build from a config before data flows."""
  model_config: models.ModelConfig
  model: Any
  mesh: jax.sharding.Mesh
  tx: Any
  schedule: Any
  state_shardings: Any
  batch_sharding: jax.NamedSharding
  init: Any  # seed -> state, placed with state_shardings
  step: Any  # (state, global batch) -> (state, metrics), jitted, state donated


def create_train_setup(config: ml_collections.ConfigDict, mesh=None) -> TrainSetup:
  """Model, mesh, optimizer, state shardings (replicated or FSDP) and the jitted step."""
  model_config = models.get_config(config.model.name, **config.model.overrides.to_dict())
  model = models.build(model_config)
  mesh = mesh if mesh is not None else parallel.make_mesh()
  try:
    parallel.local_batch_size(config.batch_size, mesh)
  except ValueError:
    raise errors.UserError(f"config.batch_size={config.batch_size} is not divisible by the "
                           f"{mesh.size} devices") from None
  k = config_lib.check_accum_steps(config)
  try:
    parallel.local_batch_size(config.batch_size // k, mesh)
  except ValueError:
    raise errors.UserError(f"config.accum_steps={k}: micro-batches of {config.batch_size // k} "
                           f"rows (config.batch_size={config.batch_size} / {k}) do not split "
                           f"over the {mesh.size} devices") from None
  batch_sharding = parallel.batch_sharding(mesh)
  tx, schedule = optim.create_optimizer(
      config.optimizer, config.total_steps, optim.gradient_clipping(config))
  # Scan and remat defaults follow the mesh's devices, not the host's backend: a TPU slice's
  # step compiled on a CPU host (bench compile) gets the TPU program.
  target = parallel.platform(mesh)
  init_fn = layers.for_platform(
      functools.partial(init_state, model, tx, config, model_config), target)
  # Replicated state, or FSDP: parameters and optimizer moments split over the data axis.
  shardings = parallel.state_shardings(jax.eval_shape(init_fn, jax.random.key(0)), mesh,
                                       fsdp=config.get("fsdp", False))
  init = jax.jit(init_fn, out_shardings=shardings)
  step = jax.jit(
      layers.for_platform(functools.partial(
          train_step, model=model, tx=tx, schedule=schedule,
          loss_fn=parallel.make_loss_fn(config.method, mesh,
                                        chunk=config.get("objective_chunk", "auto")),
          config=config, batch_sharding=batch_sharding,
          stats_fn=(parallel.make_retrieval_stats_fn(config.method, mesh,
                                                     chunk=config.get("objective_chunk", "auto"))
                    if objectives.get(config.method).needs_beta else None)), target),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, parallel.replicated_sharding(mesh)), donate_argnums=(0,))
  return TrainSetup(model_config, model, mesh, tx, schedule, shardings, batch_sharding,
                    lambda seed: init(jax.random.key(seed)), step)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       restart_from_scratch: bool = False) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`); returns the last metrics.

  When every checkpoint in `workdir` is damaged, refuses to start (DamagedCheckpointError)
  unless `restart_from_scratch`: then it trains from step 0 (the damaged steps stay aside).
  """
  config_lib.validate(config)
  workdir = paths.check(workdir, "workdir")
  paths.makedirs(workdir)
  workdir_lib.write_config(config, workdir)
  setup = create_train_setup(config)
  model_config, model, mesh = setup.model_config, setup.model, setup.mesh
  state, step_fn, batch_sharding = setup.init(config.seed), setup.step, setup.batch_sharding

  data = create_train_iterator(config, model_config)
  ckpt = checkpoint.Checkpointer(paths.join(workdir, "checkpoints"),
                                 every=config.checkpoint_every, keep=config.keep_checkpoints)
  # The newest step that reads back whole; damaged ones are moved aside (checkpoint.py).
  peerwatch.set_resume_step(functools.partial(_complete_steps, ckpt.directory))
  start, restored = ckpt.restore_latest(checkpoint.abstract_like(state), data,
                                        allow_none=restart_from_scratch)
  if start is not None:
    state = restored
    logging.info("resumed from step %d", start)
    print(f"Resumed from the checkpoint of step {start} in {ckpt.directory}", flush=True)
  elif restart_from_scratch:  # a failed restore may have moved the iterator: a fresh one
    _close(data)
    data = create_train_iterator(config, model_config)
  step = int(state["step"])

  evaluators = _build_evaluators(config, model, mesh)
  writer = workdir_lib.MetricWriter(workdir)
  stop = preemption.StopFlag().install()
  skipped = np.zeros(len(records.REASONS), np.int64)
  last = {}
  k = accum_steps(config)
  micro_batches = f" in {k} micro-batches of {config.batch_size // k}" if k > 1 else ""
  try:
    window_start, wait, window_steps = time.time(), 0.0, 0
    pending = None  # (step, metrics) of the previous step, read one step late to keep the device busy
    while step < config.total_steps:
      t0 = time.time()
      batch = next(data)
      skipped += batch.pop("skipped").sum(axis=0)
      # A signal reaches one process, or reaches them at different steps: each sends its flag
      # through the step, and all stop after the same step, the one after the flag's step
      # (read one step late, like the loss), so their collectives and saves stay in step.
      batch["stop"] = np.full((batch["image"].shape[0],), stop.signal is not None, np.int32)
      global_batch = jax.make_array_from_process_local_data(batch_sharding, batch)
      wait += time.time() - t0
      state, metrics = step_fn(state, global_batch)
      step += 1
      window_steps += 1
      stop_agreed = False
      if pending is not None:
        check_finite(*pending)
        stop_agreed = bool(pending[1][STOP])
        peerwatch.beat()  # a step finished on every process (multi-process runs)
      pending = (step, metrics)
      if step % config.log_every == 0 or step == config.total_steps:
        check_finite(*pending)
        elapsed = time.time() - window_start
        last = {k: float(v) for k, v in jax.device_get(metrics).items() if k != STOP}
        last.update(examples_per_sec=window_steps * config.batch_size / elapsed,
                    steps_per_sec=window_steps / elapsed, data_wait_fraction=wait / elapsed,
                    **{f"skipped/{r}": int(n) for r, n in zip(records.REASONS, skipped)})
        writer.write(step, last)
        if writer.active:
          eta = (config.total_steps - step) / max(last["steps_per_sec"], 1e-9)
          print(f"step {step}/{config.total_steps}  loss {last['loss']:.4f}  "
                f"lr {last['learning_rate']:.2e}  1/tau {last['inv_tau']:.1f}  "
                f"cos img {last['image_mean_cosine']:.2f} txt {last['text_mean_cosine']:.2f}  "
                f"{last['steps_per_sec']:.2f} steps/s  {last['examples_per_sec']:.0f} ex/s"
                f"{micro_batches}  data wait {100 * last['data_wait_fraction']:.0f}%  "
                f"ETA {_format_eta(eta)}",
                flush=True)
        window_start, wait, window_steps = time.time(), 0.0, 0
      with peerwatch.exempt():  # not under the step deadline (peers are still watched)
        results = _run_evals(evaluators, state, step, config, writer,
                             final=step == config.total_steps)
      if results and step == config.total_steps and writer.active:
        from cloob_jax.experiments import report
        print("\n" + report.results_markdown(results, title=f"Evaluation at step {step}"),
              flush=True)
      with peerwatch.exempt():
        ckpt.save(step, state, data, force=step == config.total_steps)
      if stop_agreed and step < config.total_steps:
        check_finite(*pending)
        preemption.save_and_exit_line(stop, ckpt, step, state, data)
        break
  except Exception as e:  # pylint: disable=broad-except
    # A collective (in the step or a save's barrier) that failed because another process went
    # away: one line and exit now, before `finally` waits on that process.
    peerwatch.fail_if_peer_gone(e)
    raise
  finally:
    stop.uninstall()
    ckpt.close()
    writer.close()
    _close(data)
  if writer.active:
    print(f"Wrote {paths.join(workdir, 'config.json')}, {paths.join(workdir, 'metrics.jsonl')}"
          f", TensorBoard events in {paths.join(workdir, 'tensorboard')} and checkpoints in "
          f"{ckpt.directory}", flush=True)
  return last


def _complete_steps(directory: str) -> int | None:
  """The newest step directory orbax finished (temporary ones carry a suffix); read without
  orbax, whose own queries wait for the other processes."""
  if not paths.exists(directory):
    return None
  steps = [int(p.name) for p in paths.path(directory).iterdir() if p.name.isdigit()]
  return max(steps, default=None)


def check_finite(step, metrics):
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise checkpoint.NonFiniteError(
        f"loss is {loss} at step {step}; stopping without saving this state. Lower the learning "
        "rate, enable optimizer.clip_grad_norm, or check the data; the run resumes from the last "
        "good checkpoint.")


def _build_evaluators(config, model, mesh):
  if not config.get("evals"):
    return {}
  from cloob_jax import evaluators
  from cloob_jax.evaluators import common
  embedder = common.Embedder(model, batch_size=config.get("eval_batch_size", 256), mesh=mesh,
                             progress=False)  # one line per eval, not progress bars in the log
  return evaluators.build_all(config.evals, embedder)


def _run_evals(evaluators, state, step, config, writer, final) -> dict[str, dict[str, float]]:
  """Runs the evals due at `step`; -> {task: {metric: value}} of those that ran."""
  from cloob_jax.evaluators import common
  table: dict[str, dict[str, float]] = {}
  for name, evaluator in evaluators.items():
    every = config.evals[name].get("log_steps", 0)
    if not (final or (every and step % every == 0)):
      continue
    results = dict(evaluator.run(models.variables(state["params"], state["batch_stats"])))  # metric names come as 'name/metric' already
    writer.write(step, results)
    common.add_metrics(table, name, results.items())
    if writer.active and not final:
      print("  ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
  return table
