"""The fine-tuning loop: state, the jitted sharded step, checkpoints, evals, WiSE-FT, export.

State: {'step', 'params': {'model': two-tower params, 'head': {'kernel', 'bias'}},
'batch_stats', 'opt_state'} ('head' absent in FLYP mode, whose head is rebuilt from the text
tower at every eval). Which parameters train is a static mask, `param_labels(mode)`:

  linear_probe   head only (the towers run in inference mode: BatchNorm statistics frozen)
  end_to_end     image tower + head (BatchNorm statistics update, as in training)
  flyp           image + text towers, by the contrastive objective `config.method`

The optimizer is `optax.multi_transform`: `optim.create_optimizer` (clipping, AdamW, warm-up
+ cosine) on the trained leaves, `set_to_zero` on the frozen ones (no moments are kept for
them), and the frozen leaves are carried over unchanged (bit for bit) after each update.
1/tau stays at the model's value in every mode.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cloob_jax import checkpoint
from cloob_jax import config_lib
from cloob_jax import losses
from cloob_jax import models
from cloob_jax import objectives
from cloob_jax import optim
from cloob_jax import parallel
from cloob_jax import paths
from cloob_jax import preemption
from cloob_jax import train
from cloob_jax import workdir as workdir_lib
from cloob_jax.finetune import classifier
from cloob_jax.finetune import data as data_lib
from cloob_jax.finetune import init_model
from cloob_jax.finetune import wise_ft
from cloob_jax.models import inputs
from cloob_jax.models import layers

MODES = ("end_to_end", "linear_probe", "flyp")
TRAIN, FREEZE = "train", "freeze"
EXPORT_FILE = "finetuned.npz"   # the fine-tuned two-tower model, cloob_jax.export's `params`
HEAD_FILE = "head.safetensors"  # the classifier head, torch.nn.Linear layout


# --------------------------------------------------------------------------- config


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a config that cannot run, naming the key, before anything is read or written."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r}{config_lib._suggest(config.mode, MODES)}; "
                     f"choose one of {', '.join(MODES)}")
  # FLYP trains the towers and 1/tau only: objectives with learnt scalars of their own
  # (SigLIP's bias) are not offered.
  flyp_methods = [m for m in objectives.names() if not objectives.get(m).extra_scalars]
  if config.mode == "flyp" and config.method not in flyp_methods:
    raise ValueError(f"config.method={config.method!r}"
                     f"{config_lib._suggest(config.method, flyp_methods)}; FLYP's "
                     f"objective is one of {', '.join(flyp_methods)}")
  for key in ("batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "eval_batch_size"):
    if int(config[key]) <= 0:
      raise ValueError(f"config.{key} must be positive, got {config[key]}")
  if (config.mode == "flyp" and objectives.get(config.method).needs_beta
      and config.beta <= 0):
    raise ValueError(f"config.beta must be positive for {config.method}, got {config.beta}")
  if config.optimizer.schedule not in ("cosine", "constant"):
    raise ValueError(f"config.optimizer.schedule={config.optimizer.schedule!r}; choose "
                     "'cosine' or 'constant'")
  wise_ft.check_alphas(config.wise_ft.alphas)
  train_data = config.data.train
  if train_data.get("source") == "synthetic":
    from cloob_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    tasks = synthetic.zeroshot_tasks()
    task = train_data.get("task")
    if task not in tasks:
      raise ValueError(f"config.data.train.task={task!r}{config_lib._suggest(str(task), tasks)}"
                       f"; the synthetic world's tasks are {', '.join(tasks)}")
  elif not train_data.get("source") and not train_data.get("path"):
    raise ValueError("config.data.train needs a source: source='synthetic' with a task, or a "
                     "path (class folder, CLIP_benchmark tars, tfds:NAME)")
  if not config.data.get("val"):
    data_lib.split_indices(1000, float(config.data.val_fraction), 0)  # the fraction's range
  init_model.check(config.init)


# --------------------------------------------------------------------------- state and step


def param_labels(mode: str):
  """params -> the same tree with TRAIN / FREEZE at every leaf."""

  def label(path, _):
    keys = [getattr(p, "key", None) for p in path]
    if keys[0] == "head":
      return TRAIN
    if mode == "linear_probe":
      return FREEZE
    if mode == "end_to_end":
      return TRAIN if keys[1] == "visual" else FREEZE
    return FREEZE if keys[1] == "logit_scale" else TRAIN  # flyp: both towers

  return lambda params: jax.tree_util.tree_map_with_path(label, params)


def _frozen_kept(labels, new, old):
  return jax.tree.map(lambda l, n, o: n if l == TRAIN else o, labels, new, old)


def train_step(state, batch, *, module, tx, schedule, labels, mode, loss_fn, beta):
  """One update on a global batch {'image': uint8 [B,S,S,3], 'label': int32 [B]} (FLYP:
  + 'tokens' int32 [B,L]); an optional 'stop' int32 [B] comes back as metrics[train.STOP]."""
  images = inputs.normalize(batch["image"])
  old_stats = state["batch_stats"]

  def compute_loss(params):
    params = jax.tree.map(lambda l, p: p if l == TRAIN else jax.lax.stop_gradient(p),
                          labels, params)
    variables = models.variables(params["model"], old_stats)
    aux = {}
    if mode == "flyp":
      (img, txt), updates = module.apply(variables, images, batch["tokens"], train=True,
                                            mutable=["batch_stats"])
      inv_tau = losses.inv_tau_from_log(params["model"]["logit_scale"])
      loss = loss_fn(img, txt, inv_tau, beta)
    else:
      if mode == "end_to_end":
        emb, updates = module.apply(variables, images, train=True, method=module.encode_image,
                                    mutable=["batch_stats"])
      else:  # linear probe: the frozen encoder in inference mode
        emb, updates = module.apply(variables, images, train=False,
                                    method=module.encode_image), {}
      logits = classifier.logits(emb, params["head"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      aux["train_top1"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    stats = updates.get("batch_stats", old_stats) if updates else old_stats
    return loss, (stats, aux)

  (loss, (batch_stats, aux)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = _frozen_kept(labels, optax.apply_updates(state["params"], updates), state["params"])
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state["step"]), **aux}
  if "stop" in batch:
    metrics[train.STOP] = jnp.max(batch["stop"])
  return {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
          "opt_state": opt_state}, metrics


@dataclasses.dataclass(frozen=True)
class Setup:
  mesh: Any
  tx: Any
  schedule: Any
  labels: Any
  state_shardings: Any
  batch_sharding: Any
  init: Any   # (params, batch_stats) -> state, placed
  step: Any   # (state, global batch) -> (state, metrics), jitted, state donated


def create_setup(config, module, params, batch_stats, inv_tau: float, mesh=None) -> Setup:
  mesh = mesh if mesh is not None else parallel.make_mesh()
  if config.batch_size % mesh.size:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{mesh.size} devices")
  method = config.method if config.mode == "flyp" else "clip"  # cross-entropy: logit units
  clip_config = ml_collections.ConfigDict(dict(optimizer=config.optimizer.to_dict(),
                                               method=method, inv_tau=inv_tau,
                                               learn_inv_tau=False))
  inner, schedule = optim.create_optimizer(config.optimizer, config.total_steps,
                                           optim.gradient_clipping(clip_config))
  labels_fn = param_labels(config.mode)
  tx = optax.multi_transform({TRAIN: inner, FREEZE: optax.set_to_zero()}, labels_fn)
  labels = labels_fn(params)

  def init_fn(params, batch_stats):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
            "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init_fn, params, batch_stats)
  shardings = parallel.state_shardings(abstract, mesh, fsdp=config.get("fsdp", False))
  batch_sharding = parallel.batch_sharding(mesh)
  init = jax.jit(init_fn, out_shardings=shardings)
  loss_fn = parallel.make_loss_fn(config.method, mesh) if config.mode == "flyp" else None
  step = jax.jit(
      layers.for_platform(functools.partial(
          train_step, module=module, tx=tx, schedule=schedule, labels=labels, mode=config.mode,
          loss_fn=loss_fn, beta=float(config.beta)), parallel.platform(mesh)),  # as train.py's
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, parallel.replicated_sharding(mesh)), donate_argnums=(0,))
  return Setup(mesh, tx, schedule, labels, shardings, batch_sharding, init, step)


# --------------------------------------------------------------------------- evaluation


model_variables = models.variables  # {'params', 'batch_stats' when there are any}


class Evaluator:
  """Validation top-1 of a classifier (model variables + head), or of the zero-shot head."""

  def __init__(self, embedder, splits: data_lib.Splits):
    self.embedder = embedder
    self.splits = splits
    self.predictions = None  # int32 [n] of the last call

  def zeroshot_head(self, variables):
    return classifier.zeroshot_head(self.embedder, variables, self.splits.classnames,
                                    self.splits.templates)

  def __call__(self, variables, head=None) -> dict[str, float]:
    from cloob_jax.evaluators import common  # pylint: disable=g-import-not-at-top
    from cloob_jax.evaluators import metrics  # pylint: disable=g-import-not-at-top
    if head is None:
      head = self.zeroshot_head(variables)
    emb, labels = common.embed_labelled(self.embedder, variables, self.splits.val)
    head = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), dict(head))
    scores = classifier.logits(emb, head)
    # Stable sort of the negated scores, as the zero-shot evaluator ranks (ties: lower index).
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5].astype(np.int32)
    self.predictions = top[:, 0]
    found = metrics.classification_metrics(top, labels, len(self.splits.classnames))
    return {k: float(v) for k, v in found.items()}


# --------------------------------------------------------------------------- the loop


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _scalar_metrics(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items() if k != train.STOP}


def finetune(config: ml_collections.ConfigDict, workdir: str, init=None, splits=None):
  """Fine-tunes (resuming from the latest checkpoint in `workdir`); returns a summary dict.

  `init` (init_model.InitModel) and `splits` (data.Splits) are loaded from the config when
  not given (the binary loads them first, to refuse bad input before writing anything).
  """
  from cloob_jax.evaluators import common  # pylint: disable=g-import-not-at-top
  check_config(config)
  workdir = paths.check(workdir, "--workdir")
  init = init if init is not None else init_model.load(config.init)
  image_size = init.model_config.vision.image_size
  splits = splits if splits is not None else data_lib.load_splits(config.data, image_size)
  paths.makedirs(workdir)
  workdir_lib.write_config(config, workdir)
  flyp = config.mode == "flyp"
  module = init.module
  mesh = parallel.make_mesh()
  embedder = common.Embedder(module, batch_size=config.eval_batch_size, mesh=mesh,
                             progress=False)
  evaluate = Evaluator(embedder, splits)

  # numpy, kept for WiSE-FT (the state's buffers are donated)
  zs_variables = model_variables(init.variables["params"], init.variables["batch_stats"])
  zs_head = None if flyp else evaluate.zeroshot_head(zs_variables)
  params = {"model": zs_variables["params"]}
  if not flyp:
    params["head"] = zs_head
  inv_tau = float(np.exp(np.asarray(zs_variables["params"]["logit_scale"])))
  batch_stats = init.variables["batch_stats"]
  setup = create_setup(config, module, params, batch_stats, inv_tau, mesh)
  state = setup.init(params, batch_stats)
  data = data_lib.create_train_iterator(
      splits, global_batch_size=config.batch_size, image_size=image_size, seed=config.seed,
      context_length=module.text.context_length if flyp else None,
      read_threads=config.get("read_threads", 4))
  ckpt = checkpoint.Checkpointer(paths.join(workdir, "checkpoints"),
                                 every=config.checkpoint_every, keep=config.keep_checkpoints)
  # The newest step that reads back whole; damaged ones are moved aside (checkpoint.py).
  start, restored = ckpt.restore_latest(checkpoint.abstract_like(state), data)
  if start is not None:
    state = restored
    print(f"Resumed from the checkpoint of step {start} in {ckpt.directory}", flush=True)
  step = int(state["step"])

  def current():
    variables = model_variables(state["params"]["model"], state["batch_stats"])
    return variables, (None if flyp else state["params"]["head"])

  writer = workdir_lib.MetricWriter(workdir)
  stop = preemption.StopFlag().install()
  zeroshot = None
  try:
    if step == 0:
      zeroshot = evaluate(zs_variables, zs_head)
      row = {f"zeroshot/{k}": v for k, v in zeroshot.items()}
      row.update({f"val/{k}": v for k, v in evaluate(*current()).items()})
      writer.write(0, row)
      if writer.active:
        print(f"step 0  zero-shot val top-1 {100 * zeroshot['top1']:.2f}%  classifier "
              f"{100 * row['val/top1']:.2f}%  ({len(splits.train)} train, {len(splits.val)} "
              f"val examples, {len(splits.classnames)} classes, mode {config.mode})", flush=True)
    window_start, window_steps = time.time(), 0
    pending = None
    while step < config.total_steps:
      batch = next(data)
      batch["stop"] = np.full((batch["image"].shape[0],), stop.signal is not None, np.int32)
      global_batch = jax.make_array_from_process_local_data(setup.batch_sharding, batch)
      state, metrics = setup.step(state, global_batch)
      step += 1
      window_steps += 1
      stop_agreed = False
      if pending is not None:
        train.check_finite(*pending)
        stop_agreed = bool(pending[1][train.STOP])
      pending = (step, metrics)
      final = step == config.total_steps
      row = {}
      if step % config.log_every == 0 or final:
        train.check_finite(*pending)
        elapsed = time.time() - window_start
        row = _scalar_metrics(metrics)
        row.update(examples_per_sec=window_steps * config.batch_size / elapsed,
                   steps_per_sec=window_steps / elapsed)
        window_start, window_steps = time.time(), 0
      if step % config.eval_every == 0 or final:
        row.update({f"val/{k}": v for k, v in evaluate(*current()).items()})
      if row:
        writer.write(step, row)
        if writer.active:
          print(f"step {step}/{config.total_steps}  " + "  ".join(
              f"{k} {v:.4g}" for k, v in row.items() if k in (
                  "loss", "learning_rate", "train_top1", "val/top1", "steps_per_sec")),
                flush=True)
      ckpt.save(step, state, data, force=final)
      if stop_agreed and not final:
        train.check_finite(*pending)
        preemption.save_and_exit_line(stop, ckpt, step, state, data)
        break
  finally:
    stop.uninstall()
    ckpt.close()
    writer.close()
  if step < config.total_steps:
    return {"step": step, "stopped": True}
  return _finish(config, workdir, init, evaluate, zs_variables, zs_head, state, zeroshot)


def _finish(config, workdir, init, evaluate, zs_variables, zs_head, state, zeroshot):
  """The end of a run: final eval, WiSE-FT sweep, table and plot, export of model and head."""
  flyp = config.mode == "flyp"
  ft_variables = _host(model_variables(state["params"]["model"], state["batch_stats"]))
  ft_head = None if flyp else _host(state["params"]["head"])
  if zeroshot is None:
    zeroshot = evaluate(zs_variables, zs_head)
  finetuned = evaluate(ft_variables, ft_head)
  if flyp:
    ft_head = _host(evaluate.zeroshot_head(ft_variables))

  def evaluate_tree(tree):
    return evaluate(tree["model"], tree.get("head"))

  zs_tree, ft_tree = {"model": zs_variables}, {"model": ft_variables}
  if not flyp:
    zs_tree["head"], ft_tree["head"] = zs_head, ft_head
  rows = wise_ft.sweep(evaluate_tree, zs_tree, ft_tree, config.wise_ft.alphas)
  step = int(state["step"])
  title = (f"WiSE-FT, {config.mode}" + (f" ({config.method})" if flyp else "")
           + f", step {step}, from {init.source}")
  result = {"mode": config.mode, "method": config.method if flyp else None, "step": step,
            "seed": int(config.seed), "init": init.source, "zeroshot": zeroshot,
            "finetuned": finetuned}
  written = []
  if jax.process_index() == 0:
    written += wise_ft.write(workdir, rows, title, extra=result)
    written += _export(config, workdir, init, ft_variables, ft_head, step,
                       evaluate.splits)
  best = wise_ft.summary(rows)
  best = {"alpha": best["best_alpha"], "top1": best["best_val_top1"]}
  summary = {**result, "best_alpha": best["alpha"], "best_alpha_top1": best["top1"],
             "written": written}
  if jax.process_index() == 0:
    print(wise_ft.markdown(rows, title), flush=True)
    print(f"zero-shot {100 * zeroshot['top1']:.2f}%  fine-tuned {100 * finetuned['top1']:.2f}%"
          f"  best WiSE-FT alpha {best['alpha']:g}: {100 * best['top1']:.2f}% (val top-1). "
          f"Wrote {', '.join(written)}", flush=True)
  return summary


def _export(config, workdir, init, variables, head, step, splits) -> list[str]:
  """The fine-tuned model through cloob_jax.export (`params`) and the head as safetensors."""
  from cloob_jax import export  # pylint: disable=g-import-not-at-top
  info = export.metadata(init.name, init.overrides, init.model_config, variables, fmt="params",
                         source=paths.absolute(workdir), train_config=init.train_config,
                         step=step)
  info["finetune"] = {"mode": config.mode,
                      "method": config.method if config.mode == "flyp" else None,
                      "init": init.source, "seed": int(config.seed)}
  written = export.export(variables, init.name, init.model_config, "params",
                          paths.join(workdir, EXPORT_FILE), info, overwrite=True)
  head_path = paths.join(workdir, HEAD_FILE)
  classifier.write_head(head_path, head, {
      **info, "format": "head", "classnames": list(splits.classnames),
      "templates": list(splits.templates),
      "logits": "normalise(image embedding) @ weight.T + bias"})
  return written + [head_path]
