"""Compile the real train step for a TPU slice that is not attached (deviceless AOT).

  python -m cloob_jax.bench compile --config=configs/yfcc.py:model=ViT-B/16,batch_size=32768 \
      --topology=v5e:16x16 [--num_slices=2] [--json=OUT]

libtpu (`pip install "jax[tpu]"`) describes the topology's chips without any being attached. The
train step comes from the trainer's own `train.create_train_setup` on a mesh over those abstract
devices, with the state and batch as `jax.ShapeDtypeStruct`s (nothing is allocated); the eval
embedding step comes from the evaluators' own encoders. Each is compiled by the TPU compiler,
and per chip this prints: HBM (arguments, temporaries, output, aliased, code, total) against the
chip's capacity, the compiler's FLOPs beside the model's (unrolled, not rematerialised), the
collectives in the optimised HLO by kind with their bytes, the compile time, and a roofline
lower bound of the step time. Every time printed except the compile time is an estimate from
the chip table below, never a measurement; XLA's `optimal_seconds` is not used (it came back
negative for whole train steps).

A config that does not fit prints `does not fit: needs X GiB, chip has Y GiB` and exits 1; a
bad topology or config prints one `error:` line and exits 2 (`--traceback` shows the trace).
"""

import argparse
import collections
import copy
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
import time

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation's figures per chip (bytes, FLOP/s, bytes/s)."""
  name: str
  dims: int            # the topology's dimensions: AxB (2) or AxBxC (3)
  chip_config: str     # libtpu's chip_config_name: one device per chip ("megacore" on v4, v5p)
  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float        # bidirectional, all of the chip's ICI links together
  dcn_bytes_per_s: float | None  # the data-center network's share per chip; None: not published


# Public figures. Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e,
# /v5p, /v6e): peak bf16 compute, HBM capacity and bandwidth, bidirectional ICI bandwidth per
# chip, DCN bandwidth (v5e: 6.4 Tbps per 256-chip pod, v5p: 50 Gbps per chip). v4's ICI (not on
# its page): six links of 50 GB/s from "TPU v4: An Optically Reconfigurable Supercomputer for
# Machine Learning with Hardware Support for Embeddings" (Jouppi et al., ISCA 2023).
CHIPS = {
    "v4": Chip("v4", 3, "megacore", 32 * GIB, 275e12, 1200e9, 300e9, None),
    "v5e": Chip("v5e", 2, "default", 16 * GIB, 197e12, 819e9, 400e9, 6.4e12 / 8 / 256),
    "v5p": Chip("v5p", 3, "megacore", 95 * GIB, 459e12, 2765e9, 1200e9, 50e9 / 8),
    "v6e": Chip("v6e", 2, "default", 32 * GIB, 918e12, 1638e9, 800e9, None),
}

VALID_FORMS = ("v4:AxBxC, v5p:AxBxC, v5e:AxB or v6e:AxB chips (e.g. v5e:16x16 is a v5e-256, "
               "v4:2x2x1 a v4-8)")

# Collective ops in optimised HLO; async pairs are counted at their '-start'.
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all")
_OP = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_ITEM_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}
# A multi-slice TPU program's DCN transfer: a send to libtpu's megascale runtime, tagged with
# the collective it belongs to.
_DCN_SEND = re.compile(r"=\s*\(([^=]*?)\)\s+send\(.*_xla_megascale_transfer_type=\"(\w+)\"")
# Who talks to whom: explicit groups ({{0,1},{2,3}}; {} is every device), iota groups
# ([2,4]<=[8], [4,2]<=[2,4]T(1,0)) or a collective-permute's pairs.
_GROUPS = re.compile(r"(?:replica_groups|source_target_pairs)=(\{[\d,{}\s]*\}|"
                     r"\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?)")


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m cloob_jax.bench compile", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/demo.py", help="config file[:args]")
  p.add_argument("--topology", required=True, help=f"the slice: {VALID_FORMS}")
  p.add_argument("--num_slices", type=int, default=1,
                 help="slices over DCN: the mesh is then ('dcn', 'data'), slices by chips, "
                      "the batch split over both (parallel.hybrid_mesh)")
  p.add_argument("--remat", default=None, choices=("off", "full", "dots"),
                 help="both towers' remat (default: the config's, else the TPU default)")
  p.add_argument("--scan", choices=("on", "off"), default=None,
                 help="transformer blocks as one lax.scan (default: the config's, else the "
                      "TPU default: unrolled)")
  p.add_argument("--no_eval", action="store_true", help="compile the train step only")
  p.add_argument("--json", default=None, help="also write the figures to this file")
  p.add_argument("--traceback", action="store_true", help="show the trace of an error")
  return p.parse_args(argv)


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
  """'v5e:16x16' -> (CHIPS['v5e'], (16, 16)); a UserError listing the valid forms otherwise."""
  from cloob_jax import errors
  kind, _, shape = name.partition(":")
  chip = CHIPS.get(kind)
  dims = tuple(int(d) for d in shape.split("x")) if re.fullmatch(r"\d+(x\d+)*", shape) else ()
  if chip is None or len(dims) != chip.dims or not all(dims):
    raise errors.UserError(f"--topology={name!r}: expected {VALID_FORMS}")
  return chip, dims


def topology_devices(name: str, num_slices: int = 1):
  """The abstract devices of `num_slices` slices of topology `name` (libtpu; no TPU needed):
  one per chip, slice-major."""
  from cloob_jax import errors
  chip, _ = parse_topology(name)
  if num_slices < 1:
    raise errors.UserError(f"--num_slices={num_slices}: expected 1 or more")
  if importlib.util.find_spec("libtpu") is None:
    raise errors.UserError(f"--topology={name}: libtpu is not installed "
                           "(pip install \"jax[tpu]==0.12.0.1\")")
  # No TPU is attached, so nothing is shared: without this a second process that loads libtpu
  # (a training run's, a parallel compile) fails on libtpu's lockfile in /tmp.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    devices = topologies.get_topology_desc(
        platform="tpu", topology_name=name, chip_config_name=chip.chip_config,
        num_slices=num_slices).devices
  except Exception as e:  # pylint: disable=broad-except  (libtpu's own wording, one line)
    raise errors.UserError(f"--topology={name!r}: libtpu refused it: "
                           f"{str(e).strip().splitlines()[0]} (valid forms: {VALID_FORMS})") from e
  return sorted(devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))


def replica_groups(line: str) -> list[list[int]] | None:
  """The device groups of one collective's HLO line (ids: positions in the program's device
  assignment, the mesh's devices in order); None: one group of every device."""
  match = _GROUPS.search(line)
  if not match or match.group(1) == "{}":
    return None
  import numpy as np
  text = match.group(1)
  if text.startswith("{"):
    return [[int(i) for i in g.split(",") if i.strip()]
            for g in re.findall(r"\{([\d,\s]*)\}", text[1:-1])]
  shape, dims, perm = re.fullmatch(r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?",
                                   text).groups()
  ids = np.arange(math.prod(int(d) for d in dims.split(","))).reshape(
      [int(d) for d in dims.split(",")])
  if perm:
    ids = ids.transpose([int(d) for d in perm.split(",")])
  return ids.reshape([int(d) for d in shape.split(",")]).tolist()


def crosses_slices(groups: list[list[int]] | None, slice_of: list[int]) -> bool:
  """Whether any group joins devices of different slices (`slice_of[id]`): bytes over DCN."""
  if groups is None:
    return len(set(slice_of)) > 1
  return any(len({slice_of[i] for i in g}) > 1 for g in groups)


def collectives(hlo_text: str, slice_of: list[int] | None = None) -> dict[str, dict[str, int]]:
  """{kind: {'ops', 'bytes'}} of the collectives in optimised HLO text, bytes being each op's
  result on one device (for an async '-start', its largest array). An op inside a loop body
  is counted once, not once per iteration. With `slice_of` (each device's slice, in the
  program's device order) spanning several slices, also 'dcn_bytes': the data each chip sends
  over DCN (libtpu's megascale sends, counted under their collective's kind) and the ops whose
  groups cross slices."""
  multislice = slice_of is not None and len(set(slice_of)) > 1
  out = collections.defaultdict(lambda: dict({"ops": 0, "bytes": 0},
                                             **({"dcn_bytes": 0} if multislice else {})))
  for line in hlo_text.splitlines():
    dcn = _DCN_SEND.search(line)
    if dcn and multislice:  # libtpu's multi-slice program sends DCN's share to the runtime
      sizes = [_array_bytes(t, dims) for t, dims in _ARRAY.findall(dcn.group(1))]
      kind = dcn.group(2).lower().replace("_", "-")
      out[kind]["ops"] += 1
      out[kind]["bytes"] += sizes[0]
      out[kind]["dcn_bytes"] += sizes[0]
      continue
    match = _OP.search(line)
    if not match:
      continue
    sizes = [_array_bytes(t, dims) for t, dims in _ARRAY.findall(match.group(1))]
    if not sizes:
      continue
    kind = match.group(2)
    size = max(sizes) if match.group(3) else sum(sizes)
    out[kind]["ops"] += 1
    out[kind]["bytes"] += size
    if multislice and crosses_slices(replica_groups(line), slice_of):
      out[kind]["dcn_bytes"] += size
  return dict(out)


def _array_bytes(dtype: str, dims: str) -> int:
  item = _ITEM_BYTES.get(dtype)
  if item is None:
    bits = re.match(r"[suf](\d+)", dtype)
    item = max(1, int(bits.group(1)) // 8) if bits else 1
  return item * math.prod(int(d) for d in dims.split(",") if d)


def memory(compiled) -> dict[str, int]:
  """Per-device HBM of a compiled program: arguments, temporaries, output, aliased, code and
  the total live at once (arguments + output - aliased + temporaries + code)."""
  m = compiled.memory_analysis()
  out = {"argument": int(m.argument_size_in_bytes), "temp": int(m.temp_size_in_bytes),
         "output": int(m.output_size_in_bytes), "alias": int(m.alias_size_in_bytes),
         "code": int(m.generated_code_size_in_bytes)}
  out["total"] = (out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"])
  return out


def cost(compiled) -> dict[str, float]:
  """The compiler's FLOPs and bytes accessed per device (never its 'optimal_seconds')."""
  c = compiled.cost_analysis()
  if isinstance(c, (list, tuple)):
    c = c[0] if c else None
  c = c or {}
  return {"flops": float(c.get("flops", 0.0)), "bytes_accessed": float(c.get("bytes accessed", 0.0))}


def roofline(chip: Chip, flops: float, hbm_bytes: float, collective_bytes: float,
             dcn_bytes: float = 0.0) -> dict[str, float]:
  """Lower bound of a step's seconds on `chip`: max(FLOPs / peak, HBM bytes / bandwidth) plus
  collective bytes / link bandwidth: ICI's, and DCN's per-chip share for the `dcn_bytes` (of
  `collective_bytes`) whose groups cross slices (at ICI's where DCN's is not published). An
  estimate from public peak figures, never a measured time."""
  compute_s, hbm_s = flops / chip.peak_bf16_flops, hbm_bytes / chip.hbm_bytes_per_s
  ici_s = (collective_bytes - dcn_bytes) / chip.ici_bytes_per_s
  dcn_s = dcn_bytes / (chip.dcn_bytes_per_s or chip.ici_bytes_per_s)
  return {"compute_s": compute_s, "hbm_s": hbm_s, "ici_s": ici_s, "dcn_s": dcn_s,
          "link_s": ici_s + dcn_s, "step_s": max(compute_s, hbm_s) + ici_s + dcn_s}


def _tower_overrides(config, args, model_config):
  """--remat / --scan as the towers' overrides (where the tower has the field)."""
  for tower in ("vision", "text"):
    fields = {f.name for f in dataclasses.fields(getattr(model_config, tower))}
    extra = dict(config.model.overrides.get(tower, {}))
    if args.remat and "remat" in fields:
      extra["remat"] = False if args.remat == "off" else args.remat
    if args.scan and "scan" in fields:
      extra["scan"] = args.scan == "on"
    if extra:
      config.model.overrides[tower] = extra


def platform_choices(model_config, platform: str) -> dict[str, dict]:
  """{tower: {'scan', 'remat'}} as the towers run on `platform` (layers.scans, effective_remat)."""
  from cloob_jax.models import layers
  out = {}
  for tower in ("vision", "text"):
    cfg = getattr(model_config, tower)
    scanned = layers.scans(getattr(cfg, "scan", False), getattr(cfg, "width", 0), platform)
    out[tower] = {"scan": scanned,
                  "remat": layers.effective_remat(getattr(cfg, "remat", False), scanned,
                                                  platform)}
  return out


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def _bytes_per_device(tree) -> int:
  import jax
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
             for a in jax.tree.leaves(tree))


def train_program(config, mesh):
  """(setup, abstract state, abstract batch) of the trainer's step on `mesh`."""
  import jax
  import jax.numpy as jnp
  from cloob_jax import train
  setup = train.create_train_setup(config, mesh=mesh)
  state = _abstract(jax.eval_shape(setup.init, 0), setup.state_shardings)
  size, context = setup.model_config.vision.image_size, setup.model_config.text.context_length
  b, sharding = config.batch_size, setup.batch_sharding
  batch = {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=sharding),
           "tokens": jax.ShapeDtypeStruct((b, context), jnp.int32, sharding=sharding),
           "stop": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding)}  # as the loop's
  return setup, state, batch


def _figures(compiled, compile_s, mesh=None) -> dict:
  hlo = compiled.as_text()
  slice_of = None if mesh is None else [getattr(d, "slice_index", 0) for d in mesh.devices.flat]
  return {"compile_s": compile_s, "memory": memory(compiled), **cost(compiled),
          "collectives": collectives(hlo, slice_of)}


def compile_train(config, mesh) -> tuple[dict, object, object]:
  setup, state, batch = train_program(config, mesh)
  t0 = time.perf_counter()
  compiled = setup.step.lower(state, batch).compile()
  figures = _figures(compiled, time.perf_counter() - t0, mesh)
  figures["state_bytes"] = _bytes_per_device(state)
  figures["params_bytes"] = _bytes_per_device(state["params"])
  return figures, setup, state


def compile_eval(config, setup, state) -> dict:
  """The eval embedding step (evaluators.common's image and text encoders) at the config's
  eval batch size, rounded up to a multiple of the devices as the Embedder does."""
  import jax
  import jax.numpy as jnp
  from cloob_jax import models
  from cloob_jax import parallel
  from cloob_jax.evaluators import common
  mesh, mc = setup.mesh, setup.model_config
  shards = parallel.axis_size(mesh, parallel.batch_axes(mesh))
  n = -(-int(config.get("eval_batch_size", 256)) // shards) * shards
  replicated, sharding = parallel.replicated_sharding(mesh), setup.batch_sharding
  variables = models.variables(state["params"], state["batch_stats"])
  variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                           variables)
  size, context = mc.vision.image_size, mc.text.context_length
  images = jax.ShapeDtypeStruct((n, size, size, 3), jnp.uint8, sharding=sharding)
  tokens = jax.ShapeDtypeStruct((n, context), jnp.int32, sharding=sharding)
  images_fn, texts_fn, _ = common.encoders(setup.model, mesh)
  out = {"batch_size": n}
  for name, fn, x in (("images", images_fn, images), ("texts", texts_fn, tokens)):
    t0 = time.perf_counter()
    compiled = fn.lower(variables, x).compile()
    out[name] = _figures(compiled, time.perf_counter() - t0, mesh)
  return out


def model_flops(config, mesh, choices) -> float | None:
  """The step's FLOPs per device unrolled and without remat (model work, not recomputation;
  XLA counts a scan's body once): None when the step already runs so (its own count is the
  model's), else from compiling that variant."""
  if not any(c["scan"] or c["remat"] for c in choices.values()):
    return None
  config = copy.deepcopy(config)
  for tower, c in choices.items():
    if c["scan"] or c["remat"]:
      plain = dict({"scan": False} if c["scan"] else {}, remat=False)
      config.model.overrides[tower] = dict(config.model.overrides.get(tower, {}), **plain)
  setup, state, batch = train_program(config, mesh)
  return cost(setup.step.lower(state, batch).compile())["flops"]


def eval_needs(train: dict, evals: dict, fsdp: bool) -> int:
  """HBM per chip while evaluating: the train state stays resident, beside each encoder's
  temporaries, output and arguments other than the state's own parameters."""
  worst = 0
  for name in ("images", "texts"):
    m = evals[name]["memory"]
    extra_args = m["argument"] - (0 if fsdp else train["params_bytes"])
    worst = max(worst, train["state_bytes"] + max(extra_args, 0) + m["temp"] + m["output"]
                + m["code"])
  return worst


def _gib(n) -> str:
  return f"{n / GIB:.2f}"


def _print_program(title, fig, chip, capacity):
  m = fig["memory"]
  print(f"{title}: compile {fig['compile_s']:.1f} s")
  print(f"  HBM per chip, GiB: arguments {_gib(m['argument'])}, temporaries {_gib(m['temp'])}, "
        f"output {_gib(m['output'])}, aliased {_gib(m['alias'])}, code {_gib(m['code'])}; "
        f"total {_gib(m['total'])} of {_gib(capacity)} ({100 * m['total'] / capacity:.0f}%)")
  line = f"  FLOPs per chip: compiler {fig['flops']:.4g}"
  if "model_flops" in fig:
    line += f", model {fig['model_flops']:.4g} (unrolled, no remat)"
  print(line + f"; HBM bytes accessed (compiler) {fig['bytes_accessed']:.4g}")
  if fig["collectives"]:
    print("  collectives per chip per step: " + ", ".join(
        f"{k} {v['ops']}x {v['bytes'] / 2**20:.2f} MiB"
        + (f" ({v['dcn_bytes'] / 2**20:.2f} MiB across slices)" if "dcn_bytes" in v else "")
        for k, v in sorted(fig["collectives"].items())))
  else:
    print("  collectives per chip per step: none")
  r = fig.get("roofline")
  if r:
    print(f"  roofline lower bound on {chip.name} (an estimate, not a measurement): compute "
          f"{r['compute_s'] * 1e3:.2f} ms, HBM {r['hbm_s'] * 1e3:.2f} ms, ICI "
          f"{r['ici_s'] * 1e3:.2f} ms" + (f", DCN {r['dcn_s'] * 1e3:.2f} ms" if r["dcn_s"] else "")
          + f" -> {r['step_s'] * 1e3:.2f} ms/step"
          + (f", at most {r['images_per_s']:,.0f} images/s" if "images_per_s" in r else ""))


def run_compile(args) -> tuple[dict, bool]:
  """-> (figures, fits)."""
  import jax
  import ml_collections
  from cloob_jax import config_lib
  from cloob_jax import models
  from cloob_jax import parallel
  chip, _ = parse_topology(args.topology)
  devices = topology_devices(args.topology, args.num_slices)
  config = config_lib.load_config_file(args.config)
  base = models.get_config(config.model.name, **config.model.overrides.to_dict())
  _tower_overrides(config, args, base)
  config.model.overrides = ml_collections.ConfigDict(config.model.overrides.to_dict())
  mesh = parallel.make_mesh(devices=devices)  # ('dcn', 'data') over several slices
  platform = parallel.platform(mesh)
  mc = models.get_config(config.model.name, **config.model.overrides.to_dict())
  choices = platform_choices(mc, platform)
  capacity = chip.hbm_bytes
  try:
    libtpu = importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    libtpu = "?"
  figures = {
      "config": args.config, "topology": args.topology, "num_slices": args.num_slices,
      "devices": len(devices), "device_kind": devices[0].device_kind, "platform": platform,
      "host_backend": jax.default_backend(), "jax": jax.__version__, "libtpu": libtpu,
      "model": config.model.name, "dtype": mc.dtype, "method": config.method,
      "batch_size": config.batch_size, "fsdp": bool(config.get("fsdp", False)),
      "choices": choices, "chip": dataclasses.asdict(chip)}
  print(f"{config.model.name} {mc.dtype} {config.method}, global batch {config.batch_size}"
        f"{', FSDP' if figures['fsdp'] else ''} on {args.topology}"
        f"{f' x {args.num_slices} slices' if args.num_slices > 1 else ''}: {len(devices)} x "
        f"{devices[0].device_kind}, compiled on a {jax.default_backend()} host (jax "
        f"{jax.__version__}, libtpu {libtpu})")
  print("  towers as compiled for " + platform + ": " + ", ".join(
      f"{t} scan={c['scan']} remat={c['remat']}" for t, c in choices.items()))
  train, setup, state = compile_train(config, mesh)
  flops = model_flops(config, mesh, choices)
  train["model_flops"] = train["flops"] if flops is None else flops
  collective_bytes = sum(v["bytes"] for v in train["collectives"].values())
  dcn_bytes = sum(v.get("dcn_bytes", 0) for v in train["collectives"].values())
  train["roofline"] = roofline(chip, train["flops"], train["bytes_accessed"], collective_bytes,
                               dcn_bytes)
  train["roofline"]["images_per_s"] = config.batch_size / train["roofline"]["step_s"]
  figures["train_step"] = train
  _print_program("train step", train, chip, capacity)
  needs = train["memory"]["total"]
  if not args.no_eval:
    evals = compile_eval(config, setup, state)
    figures["eval_embedding"] = evals
    for name in ("images", "texts"):
      _print_program(f"eval embedding ({name}, batch {evals['batch_size']})", evals[name], chip,
                     capacity)
    evals["needs_bytes"] = eval_needs(train, evals, figures["fsdp"])
    print(f"  during evals (train state resident): {_gib(evals['needs_bytes'])} GiB per chip")
    needs = max(needs, evals["needs_bytes"])
  figures["needs_bytes"], figures["capacity_bytes"] = needs, capacity
  figures["headroom"] = 1 - needs / capacity
  fits = needs <= capacity
  if fits:
    print(f"fits: needs {_gib(needs)} GiB, chip has {_gib(capacity)} GiB "
          f"({100 * figures['headroom']:.0f}% headroom)")
  return figures, fits


def run():
  args = _parse(sys.argv[1:])
  from cloob_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    figures, fits = run_compile(args)
  except Exception as e:  # pylint: disable=broad-except
    text = errors.message(e)
    if text is None or args.traceback:
      raise
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.exit(2)
  if args.json:
    from cloob_jax import paths  # pylint: disable=g-import-not-at-top
    paths.write_text(args.json, json.dumps(figures, indent=2, default=str))
  if not fits:
    print(f"does not fit: needs {_gib(figures['needs_bytes'])} GiB, chip has "
          f"{_gib(figures['capacity_bytes'])} GiB", file=sys.stderr, flush=True)
    sys.exit(1)
