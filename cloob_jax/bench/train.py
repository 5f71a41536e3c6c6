"""Train-step benchmark: `python -m cloob_jax.bench train --config=configs/demo.py [flags]`.

Compiles the real train step once, times it on random batches already on the device (no input
pipeline), and prints step time, images/s, model FLOP/s from XLA's cost analysis, and that as a
fraction of a large matmul's FLOP/s measured in the same run. `--objective` adds, in a
subprocess with 8 virtual devices, the per-device temporary memory of the gathered objective
(CLOOB and CLIP, plain and chunked, at global batches 8k/16k/32k, also as a multiple of one
[local, global] float32 score block) and its share of a ViT-B/16 step's FLOPs. `--torch` times
open_clip's PyTorch step for the same model and batch in the same run. `--accum_steps=k` times
the accumulated step (config.accum_steps) alternately with the plain one at the same global
batch and prints their step time, FLOPs and temporaries ratios.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m cloob_jax.bench train")
  p.add_argument("--config", default="configs/demo.py", help="config file[:args]")
  p.add_argument("--model", default=None, help="override config.model.name (e.g. ViT-B/32)")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--dtype", default=None, help="float32 | bfloat16 compute")
  p.add_argument("--method", default=None)
  p.add_argument("--attention", default=None,
                 help="einsum | xla | cudnn (jax.nn.dot_product_attention; cudnn needs bfloat16)")
  p.add_argument("--remat", nargs="?", const="full", default=None,
                 choices=("off", "full", "dots"),
                 help="both towers' blocks rematerialised: full (--remat alone), keeping the "
                      "weight matmuls' outputs (dots), or off (default: the model's; "
                      "transformers that scan on XLA:CPU take dots)")
  p.add_argument("--scan", choices=("on", "off"), default=None,
                 help="transformer blocks as one lax.scan, or unrolled (default: the model's)")
  p.add_argument("--accum_steps", type=int, default=None,
                 help="gradient accumulation over this many micro-batches (config.accum_steps); "
                      "above 1, the k = 1 step at the same global batch is compiled and timed "
                      "alternately with it (--rounds), and the ratios of step time, FLOPs and "
                      "temporaries are printed")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--torch", action="store_true", help="also time open_clip's PyTorch step")
  p.add_argument("--rounds", type=int, default=1,
                 help="with --torch or --accum_steps: time the two steps alternately this "
                      "many times and report each round's ratio and the median")
  p.add_argument("--objective", action="store_true",
                 help="gathered-objective memory and FLOP share (subprocess, 8 devices)")
  p.add_argument("--objective_batch", default="8192,16384,32768",
                 help="global batches for --objective, comma-separated")
  p.add_argument("--objective_dim", type=int, default=512)
  p.add_argument("--objective_chunk", type=int, default=None,
                 help="candidates per score block of the chunked objective "
                      "(default losses.DEFAULT_CHUNK)")
  p.add_argument("--profile", type=int, default=0, metavar="N",
                 help="trace N more steps with jax.profiler and print the time per op kind")
  p.add_argument("--json", default=None, help="also write the figures to this file")
  p.add_argument("--_objective_only", action="store_true", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0)) if cost else 0.0


# Dense bf16 peak FLOP/s per chip by device kind (vendor figures), for MFU: one device's FLOPs
# of the partitioned step (XLA's cost analysis) over (step time x peak). First match wins.
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The chip's dense bf16 peak (PEAK_BF16_FLOPS), or None for a kind not listed (CPUs)."""
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def _memory(compiled) -> dict[str, int]:
  """XLA's memory analysis of the compiled step, per device; plus the device's own peak."""
  import jax
  out = {}
  try:
    analysis = compiled.memory_analysis()
    out = {"temp_bytes": int(analysis.temp_size_in_bytes),
           "argument_bytes": int(analysis.argument_size_in_bytes),
           "output_bytes": int(analysis.output_size_in_bytes)}
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    pass
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def _time(fn, steps, warmup, host=None):
  """Seconds per call of `fn` after `warmup` calls. `host`, a dict, receives the process's CPU
  seconds (user, system) and minor page faults per timed call."""
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn())
  before = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / steps
  after = resource.getrusage(resource.RUSAGE_SELF)
  if host is not None:
    host.update(user_s=(after.ru_utime - before.ru_utime) / steps,
                system_s=(after.ru_stime - before.ru_stime) / steps,
                minor_faults=(after.ru_minflt - before.ru_minflt) / steps)
  return seconds


def matmul_flops_per_sec(n=2048, dtype="float32"):
  """FLOP/s of an n x n x n matmul on this backend: the achievable peak to compare against."""
  import jax
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  seconds = _time(lambda: f(a, b), 5, 2)
  return 2 * n**3 / seconds


def _tower_overrides(config, args):
  """--remat and --scan as overrides of the towers that have the field (scan: transformers)."""
  import dataclasses
  from cloob_jax import models
  base = models.get_config(config.model.name, **config.model.overrides.to_dict())
  for tower in ("vision", "text"):
    fields = {f.name for f in dataclasses.fields(getattr(base, tower))}
    extra = dict(config.model.overrides.get(tower, {}))
    if args.remat:
      extra["remat"] = False if args.remat == "off" else args.remat
    if args.scan and "scan" in fields:
      extra["scan"] = args.scan == "on"
    if extra:
      config.model.overrides[tower] = extra


def _scanned(model_config) -> list[str]:
  """The towers of `model_config` whose transformer runs as a scan (layers.scans)."""
  from cloob_jax.models import layers
  return [t for t in ("vision", "text")
          if layers.scans(getattr(getattr(model_config, t), "scan", False),
                          getattr(getattr(model_config, t), "width", 0))]


def _effective_remat(model_config) -> dict[str, str | bool]:
  """{tower: its remat as it runs} (layers.effective_remat)."""
  from cloob_jax.models import layers
  scanned = _scanned(model_config)
  return {t: layers.effective_remat(getattr(getattr(model_config, t), "remat", False),
                                    t in scanned) for t in ("vision", "text")}


def _remat(model_config) -> str | bool:
  """The towers' remat as they run: one value when they agree, else 'vision=...,text=...'."""
  values = _effective_remat(model_config)
  if values["vision"] == values["text"]:
    return values["vision"]
  return ",".join(f"{t}={v}" for t, v in values.items())


def _model_flops(config, scanned, rematerialised, state, batch) -> float:
  """Model FLOPs per device: the step with the `scanned` towers unrolled and none
  rematerialised, for the same parameters (XLA's cost analysis counts a scan's body once, and
  recomputation is not model work). With accum_steps > 1 the loops over the micro-batches are
  unrolled too, so the count includes accumulation's second forward pass (work the step does).
  Compiled (not only lowered): the partitioned module is what is counted per device,
  replicated work (the optimizer update) included."""
  import copy
  from cloob_jax import train
  config = copy.deepcopy(config)
  with config.unlocked():
    config.accum_unroll = True
  for tower in set(scanned) | set(rematerialised):
    plain = dict({"scan": False} if tower in scanned else {}, remat=False)
    config.model.overrides[tower] = dict(config.model.overrides.get(tower, {}), **plain)
  return _flops(train.create_train_setup(config).step.lower(state, batch).compile())


def train_step_figures(config, steps, warmup):
  """-> (figures of the compiled train step, a function that runs one more step, the
  compiled step)."""
  import jax
  import jax.numpy as jnp
  from cloob_jax import train
  setup = train.create_train_setup(config)
  model_config, mesh, step = setup.model_config, setup.mesh, setup.step
  state = setup.init(0)
  size, context = model_config.vision.image_size, model_config.text.context_length
  b = config.batch_size
  batch = {
      "image": jax.random.randint(jax.random.key(1), (b, size, size, 3), 0, 256).astype(jnp.uint8),
      "tokens": jax.random.randint(jax.random.key(2), (b, context), 1, 49407).astype(jnp.int32)}
  batch = jax.device_put(batch, setup.batch_sharding)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  scanned = _scanned(model_config)
  rematerialised = [t for t, remat in _effective_remat(model_config).items() if remat]
  flops = (_model_flops(config, scanned, rematerialised, state, batch)
           if scanned or rematerialised or train.accum_steps(config) > 1 else _flops(compiled))
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics

  host = {}
  seconds = _time(run, steps, warmup, host)
  return {"model": config.model.name, "dtype": model_config.dtype, "batch_size": b,
          "method": config.method, "accum_steps": train.accum_steps(config),
          "devices": mesh.size, "compile_s": compile_s,
          "step_s": seconds, "images_per_s": b / seconds, "step_flops": flops,
          "model_flops_per_s": flops / seconds, "memory": _memory(compiled),
          "host_per_step": host}, run, compiled


def torch_step(model_name, model_config, batch_size):
  """open_clip's fp32 AdamW training step (CLIP loss) for the same model and batch, as a
  function of no arguments. Every model, shipped by open_clip or not (the demo's tiny ViT,
  overrides), is built from its own open_clip config (`export`'s), registered for the run."""
  import tempfile
  import open_clip
  import torch
  from cloob_jax.export.formats import open_clip as open_clip_format
  if model_config.vision.open_clip_cfg() is None:
    raise SystemExit(f"--torch: {model_name} is not a CLIP tower; open_clip has no such model")
  name = "cloob_jax_bench_" + model_name.replace("/", "-").replace(".", "_")
  with tempfile.TemporaryDirectory(prefix="cloob_jax_bench_") as folder:
    with open(os.path.join(folder, name + ".json"), "w") as f:
      json.dump(open_clip_format.model_cfg(model_config), f)
    open_clip.add_model_config(folder)
    model = open_clip.create_model(name, pretrained=None)
  image_size, context = model_config.vision.image_size, model_config.text.context_length
  model.train()
  loss_fn = open_clip.ClipLoss()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
  images = torch.randn(batch_size, 3, image_size, image_size)
  tokens = torch.randint(1, model_config.text.vocab_size - 1, (batch_size, context))

  def step():
    opt.zero_grad(set_to_none=True)
    img, txt, scale = model(images, tokens)
    loss = loss_fn(img, txt, scale)
    loss.backward()
    opt.step()

  return step


def objective_figures(batches, dim, chunk=None):
  """Runs in a process with 8 virtual devices: memory of the gathered objective (value and
  gradients) per device, plain and chunked, against one [local, global] score block."""
  import jax
  import jax.numpy as jnp
  from cloob_jax import losses
  from cloob_jax import parallel
  mesh = parallel.make_mesh()
  sharding = parallel.batch_sharding(mesh)
  chunk = chunk or losses.DEFAULT_CHUNK
  out = {"devices": mesh.size, "dim": dim, "chunk": chunk, "batches": []}
  for batch in batches:
    spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding)
    row = {"global_batch": batch, "local_x_global_scores_bytes": batch // mesh.size * batch * 4,
           "global_x_global_scores_bytes": batch * batch * 4}
    for method in ("cloob", "clip"):
      for name, size in (("plain", None), ("chunked", chunk)):
        loss = parallel.make_loss_fn(method, mesh, chunk=size)
        grad = jax.jit(jax.value_and_grad(lambda x, y, f=loss: f(x, y, 30.0, 8.0),
                                          argnums=(0, 1)))
        compiled = grad.lower(spec, spec).compile()
        # No FLOPs here: XLA's cost analysis counts a scan's body once, not per block.
        row[f"{method}_{name}"] = {
            "temp_bytes_per_device": int(compiled.memory_analysis().temp_size_in_bytes)}
    out["batches"].append(row)

  # The objective's share of a ViT-B/16 step at the same global batch per device count.
  from cloob_jax import models
  vit = models.create_model("ViT-B/16", dtype="bfloat16")
  per_device = 256
  b = per_device * mesh.size
  images = jax.ShapeDtypeStruct((b, 224, 224, 3), jnp.float32, sharding=sharding)
  tokens = jax.ShapeDtypeStruct((b, 77), jnp.int32, sharding=sharding)
  variables = jax.eval_shape(vit.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                             jnp.zeros((1, 77), jnp.int32))
  loss = parallel.make_loss_fn("cloob", mesh)

  def step_loss(params, images, tokens):
    img, txt = vit.apply({"params": params}, images, tokens)
    return loss(img, txt, 30.0, 8.0)

  step_flops = _flops(jax.jit(jax.grad(step_loss)).lower(variables["params"], images,
                                                         tokens).compile())
  emb = jax.ShapeDtypeStruct((b, 512), jnp.float32, sharding=sharding)
  objective = jax.jit(jax.value_and_grad(lambda x, y: loss(x, y, 30.0, 8.0), argnums=(0, 1)))
  objective_flops = _flops(objective.lower(emb, emb).compile())
  out["vit_b16_step"] = {"global_batch": b, "step_flops": step_flops,
                         "objective_flops": objective_flops,
                         "objective_share": objective_flops / step_flops if step_flops else None}
  return out


def _print_objective(fig):
  gib = 1024**3
  print(f"\nGathered objective (value + gradients), d={fig['dim']} on {fig['devices']} virtual "
        f"devices: XLA temporary memory per device, GiB (x one [local, global] f32 score "
        f"block); chunked = [local, {fig['chunk']}] blocks:")
  print(f"  {'global':>7s} {'local':>6s} {'block':>6s}  {'cloob plain':>15s} "
        f"{'cloob chunked':>15s}  {'clip plain':>15s} {'clip chunked':>15s}")
  for row in fig["batches"]:
    block = row["local_x_global_scores_bytes"]
    cells = []
    for key in ("cloob_plain", "cloob_chunked", "clip_plain", "clip_chunked"):
      temp = row[key]["temp_bytes_per_device"]
      cells.append(f"{temp / gib:6.2f} ({temp / block:5.2f}x)")
    print(f"  {row['global_batch']:7d} {row['global_batch'] // fig['devices']:6d} "
          f"{block / gib:6.2f}  {cells[0]:>15s} {cells[1]:>15s}  {cells[2]:>15s} {cells[3]:>15s}")
  last = fig["batches"][-1]
  print(f"  one [global, global] f32 matrix at {last['global_batch']} would be "
        f"{last['global_x_global_scores_bytes'] / gib:.2f} GiB")
  v = fig["vit_b16_step"]
  print(f"  ViT-B/16 step at global batch {v['global_batch']}: objective {v['objective_flops']:.3g}"
        f" of {v['step_flops']:.3g} FLOPs = {100 * v['objective_share']:.2f}% (XLA cost analysis)")


def _accumulation_ratios(config, step, run_step, args):
  """The k = 1 step at the same global batch, compiled here and timed alternately with the
  accumulated one (`args.rounds` rounds); -> the ratios k / (k = 1), printed."""
  import copy
  plain_config = copy.deepcopy(config)
  plain_config.accum_steps = 1
  plain, run_plain, _ = train_step_figures(plain_config, args.steps, args.warmup)
  rounds = []  # (accumulated, plain) seconds per step
  for r in range(max(1, args.rounds)):
    ours = step["step_s"] if r == 0 else _time(run_step, args.steps, 1)
    rounds.append((ours, plain["step_s"] if r == 0 else _time(run_plain, args.steps, 1)))
  ratios = {"step_time": statistics.median(a / p for a, p in rounds),
            "flops": step["step_flops"] / plain["step_flops"]}
  temp, plain_temp = step["memory"].get("temp_bytes"), plain["memory"].get("temp_bytes")
  if temp and plain_temp:
    ratios["temporaries"] = temp / plain_temp
  k = step["accum_steps"]
  print(f"  vs accum_steps=1 at the same global batch {step['batch_size']}: step time by round "
        + ", ".join(f"{a * 1e3:.0f}/{p * 1e3:.0f} ms" for a, p in rounds)
        + f"; median ratio {ratios['step_time']:.2f}; FLOPs {ratios['flops']:.2f}x "
        f"({step['step_flops'] / 1e9:.2f} vs {plain['step_flops'] / 1e9:.2f} GFLOP per device)"
        + (f"; temporaries {ratios['temporaries']:.2f}x ({temp / 2**20:.1f} vs "
           f"{plain_temp / 2**20:.1f} MiB per device)" if "temporaries" in ratios else "")
        + f" [k={k}]")
  return {"rounds": [{"step_s": a, "plain_step_s": p} for a, p in rounds], **ratios,
          "plain": {key: plain[key] for key in ("step_s", "step_flops", "memory", "compile_s")}}


def run():
  args = _parse(sys.argv[1:])
  if args._objective_only:
    batches = [int(b) for b in args.objective_batch.split(",")]
    print(json.dumps(objective_figures(batches, args.objective_dim, args.objective_chunk)))
    return
  from cloob_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(args.config)
  if args.model:
    config.model.name = args.model
    config.model.overrides = {}
  if args.batch_size:
    config.batch_size = args.batch_size
  if args.method:
    config.method = args.method
  if args.accum_steps is not None:
    with config.unlocked():
      config.accum_steps = args.accum_steps
  if args.dtype:
    config.model.overrides["dtype"] = args.dtype
  if args.attention:
    config.model.overrides["attention"] = args.attention
  _tower_overrides(config, args)
  import ml_collections
  config.model.overrides = ml_collections.ConfigDict(dict(config.model.overrides))
  import jax
  from cloob_jax import models
  mc = models.get_config(config.model.name, **config.model.overrides.to_dict())
  figures = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
             "attention": config.model.overrides.get("attention", "einsum"),
             "remat": _remat(mc), "scan": _scanned(mc)}
  dtype = config.model.overrides.get("dtype", "float32")
  step, run_step, compiled = train_step_figures(config, args.steps, args.warmup)
  peak = matmul_flops_per_sec(dtype=dtype)
  figures.update(step, matmul_flops_per_s=peak, fraction_of_matmul=step["model_flops_per_s"] / peak)
  micro = (f" in {step['accum_steps']} micro-batches of {step['batch_size'] // step['accum_steps']}"
           if step["accum_steps"] > 1 else "")
  print(f"{step['model']} {step['dtype']} batch {step['batch_size']}{micro} ({step['method']}) on "
        f"{step['devices']} {figures['backend']} device(s): compile {step['compile_s']:.1f} s, "
        f"step {step['step_s'] * 1e3:.1f} ms, {step['images_per_s']:.1f} images/s")
  print(f"  model {step['step_flops'] / 1e9:.2f} GFLOP/step per device -> "
        f"{step['model_flops_per_s'] / 1e9:.2f}"
        f" GFLOP/s = {100 * figures['fraction_of_matmul']:.1f}% of a 2048^3 matmul's "
        f"{peak / 1e9:.2f} GFLOP/s measured in this run")
  chip = peak_flops(figures["device_kind"])
  if chip:  # the cost analysis is of one device's share of the partitioned step
    figures["mfu"] = step["model_flops_per_s"] / chip
    print(f"  MFU {100 * figures['mfu']:.1f}% of {figures['device_kind']}'s {chip / 1e12:.0f} "
          "TFLOP/s dense bf16 peak (per device)")
  memory = step["memory"]
  if memory:
    gib = 1024**3
    print("  memory per device: " + ", ".join(
        f"{k.replace('_bytes', '').replace('_', ' ')} {v / gib:.2f} GiB"
        for k, v in memory.items()))
  host = step["host_per_step"]
  print(f"  host per step: {host['user_s']:.2f} CPU-s user, {host['system_s']:.2f} system, "
        f"{host['minor_faults']:,.0f} minor page faults")
  if args.profile:
    from cloob_jax.bench import profile  # pylint: disable=g-import-not-at-top
    figures["profile"] = profile.op_profile(run_step, compiled.as_text(), steps=args.profile)
    profile.print_profile(figures["profile"])
  if step["accum_steps"] > 1:
    figures["vs_accum_steps_1"] = _accumulation_ratios(config, step, run_step, args)
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    theirs = torch_step(config.model.name, mc, config.batch_size)
    torch_steps = max(2, args.steps // 2)
    rounds = []  # (ours, open_clip's) seconds per step, timed alternately
    for r in range(max(1, args.rounds)):
      ours = step["step_s"] if r == 0 else _time(run_step, args.steps, 1)
      rounds.append((ours, _time(theirs, torch_steps, 1)))  # torch's step returns None
    median = statistics.median(o / t for o, t in rounds)
    seconds = statistics.median(t for _, t in rounds)
    figures["open_clip_step_s"] = seconds
    figures["rounds"] = [{"step_s": o, "open_clip_step_s": t} for o, t in rounds]
    figures["time_vs_open_clip"] = median
    figures["speedup_vs_open_clip"] = 1 / median
    print(f"  open_clip (PyTorch {torch.__version__}, fp32, {torch.get_num_threads()} threads) "
          f"same model and batch: step {seconds * 1e3:.1f} ms")
    print("  ours/open_clip step time by round: " + ", ".join(
        f"{o * 1e3:.0f}/{t * 1e3:.0f} ms = {o / t:.2f}" for o, t in rounds)
          + f"; median {median:.2f} (cloob_jax {1 / median:.2f}x as fast)")
  if args.objective:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "cloob_jax.bench", "train", "--_objective_only",
                           f"--objective_batch={args.objective_batch}",
                           f"--objective_dim={args.objective_dim}"]
                          + ([f"--objective_chunk={args.objective_chunk}"]
                             if args.objective_chunk else []),
                          env=env, capture_output=True, text=True, check=True)
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["objective"] = fig
    _print_objective(fig)
  if args.json:
    from cloob_jax import paths  # pylint: disable=g-import-not-at-top
    paths.write_text(args.json, json.dumps(figures, indent=2))
