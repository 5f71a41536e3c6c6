"""The CPU train step's levers side by side: `python -m cloob_jax.bench levers [flags]`.

Each lever is `bench train` with other XLA flags or model overrides, run in a process of its
own (XLA reads its flags once per process). In every round the baseline runs first, with
open_clip's PyTorch step for the same model and batch timed in the same process, then each
lever in turn; the table gives each lever's step time by round, its median ratio to the
baseline and to open_clip's step of the same round. A lever that changes the process's
environment beyond XLA (the memory allocator) helps PyTorch as well, so open_clip is timed again
in that lever's process and its ratio is to that time. A lever that fails prints its error line
and the others go on; a failed baseline ends the run.

    python -m cloob_jax.bench levers --config=configs/demo.py --model=ViT-B/32 --batch_size=32
"""

from __future__ import annotations

import argparse
import collections
import ctypes.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

# What a lever changes, the XLA flags it adds to the environment's, its `bench train`
# arguments, and the other environment variables its process gets.
Lever = collections.namedtuple("Lever", "description xla_flags args env", defaults=({},))

# XLA:CPU allocates a step's temporary buffer (2 GiB for ViT-B/32 at batch 32) with malloc on
# every execution, and glibc hands a block that large back to the kernel when it is freed, so
# each step faults its pages in again (about 546k minor faults per step). Both levers keep freed
# memory mapped; PyTorch's allocations go through the same malloc.
_NO_DECAY = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_GLIBC_KEEP = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:"
               "glibc.malloc.arena_max=1")

LEVERS = {
    "baseline": ("the defaults: one device, XLA's threads, transformers of width >= 512 "
                 "scanned with remat='dots' on XLA:CPU, einsum attention", "", ()),
    "scan_off": ("transformer blocks unrolled", "", ("--scan=off",)),
    "attention_xla": ("jax.nn.dot_product_attention (implementation='xla')", "",
                      ("--attention=xla",)),
    "remat_off": ("blocks not rematerialised (the scan keeps every intermediate)", "",
                  ("--remat=off",)),
    "remat_full": ("blocks rematerialised from their inputs", "", ("--remat=full",)),
    "devices2": ("two virtual CPU devices, the batch split over a 2-device data-parallel mesh",
                 "--xla_force_host_platform_device_count=2", ()),
    "devices2_1thread": ("as devices2, Eigen single-threaded (one thread per device)",
                         "--xla_force_host_platform_device_count=2 "
                         "--xla_cpu_multi_thread_eigen=false", ()),
    "xnn_greedy": ("XNNPACK graph fusion, greedy",
                   "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", ()),
    "onednn": ("oneDNN custom calls for dots, XNNPACK off (Intel's recipe)",
               "--xla_cpu_experimental_onednn_custom_call=true --xla_cpu_use_onednn=false "
               "--xla_cpu_experimental_ynn_fusion_type=invalid --xla_cpu_use_xnnpack=false "
               "--xla_backend_extra_options=xla_cpu_disable_new_fusion_emitter", ()),
    "eigen_dots": ("XNNPACK off: dots through Eigen", "--xla_cpu_use_xnnpack=false", ()),
    "fast_math": ("LLVM fast math (changes float results: measured, never a default)",
                  "--xla_cpu_enable_fast_math=true", ()),
    "jemalloc": ("jemalloc preloaded, freed pages kept (apt install libjemalloc2)", "", (),
                 {"LD_PRELOAD": "jemalloc", "MALLOC_CONF": _NO_DECAY}),
    "glibc_keep": ("glibc's malloc keeps freed memory (GLIBC_TUNABLES: no mmap, no trim, "
                   "one arena)", "", (), {"GLIBC_TUNABLES": _GLIBC_KEEP}),
}


def _lever(name) -> Lever:
  """LEVERS[name] as a Lever (an entry may be a plain tuple without `env`)."""
  return Lever(*LEVERS[name])


def _lever_env(env):
  """A lever's variables for its process; LD_PRELOAD is a file or a library's short name
  ('jemalloc'), which must be found on this system."""
  env = dict(env)
  if "LD_PRELOAD" in env and not os.path.isfile(env["LD_PRELOAD"]):
    found = ctypes.util.find_library(env["LD_PRELOAD"])
    if not found:
      raise FileNotFoundError(f"lib{env['LD_PRELOAD']} not found on this system "
                              "(Debian/Ubuntu: apt install libjemalloc2)")
    env["LD_PRELOAD"] = found
  if "LD_PRELOAD" in env:  # ld.so only warns and goes on without it: ask it first, in ms
    probe = subprocess.run([sys.executable, "-S", "-c", ""], env={**os.environ, **env},
                           capture_output=True, text=True, check=False)
    refused = [line for line in probe.stderr.splitlines() if "cannot be preloaded" in line]
    if refused:
      raise FileNotFoundError(refused[0].strip())
  return env


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m cloob_jax.bench levers")
  p.add_argument("--config", default="configs/demo.py", help="config file[:args]")
  p.add_argument("--model", default=None, help="override config.model.name (e.g. ViT-B/32)")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--levers", default=",".join(LEVERS),
                 help="comma-separated, from: " + ", ".join(LEVERS) + " (baseline always runs)")
  p.add_argument("--no_torch", action="store_true", help="do not time open_clip's step")
  p.add_argument("--timeout", type=float, default=1800,
                 help="seconds one lever's process may take before it counts as failed")
  p.add_argument("--json", default=None, help="also write the figures to this file")
  return p.parse_args(argv)


def _run_one(name, args, folder, round_index, torch, timeout):
  """One `bench train` process for lever `name` -> its figures, or {"error": last line}."""
  lever = _lever(name)
  out = os.path.join(folder, f"{name}.{round_index}.json")
  cmd = [sys.executable, "-m", "cloob_jax.bench", "train", f"--config={args.config}",
         f"--steps={args.steps}", f"--warmup={args.warmup}", f"--json={out}", *lever.args]
  cmd += [f"--model={args.model}"] if args.model else []
  cmd += [f"--batch_size={args.batch_size}"] if args.batch_size else []
  if torch:
    cmd += ["--torch", "--rounds=1"]
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), lever.xla_flags) if f)
  try:
    env.update(_lever_env(lever.env))
  except FileNotFoundError as e:
    return {"error": str(e)}
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"no result within --timeout={timeout} s"}
  refused = [line for line in proc.stderr.splitlines() if "cannot be preloaded" in line]
  if refused:  # ld.so goes on without the library: the figures would be the baseline's
    return {"error": refused[0].strip()}
  if proc.returncode != 0 or not os.path.exists(out):
    lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
    named = [line for line in lines
             if re.search(r"^\w+(\.\w+)*(Error|Exception|Exit)\b|^F\d{4}|^error:", line)]
    return {"error": (named or lines)[-1].strip()}
  with open(out) as f:
    return json.load(f)


def run(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  names = list(dict.fromkeys(["baseline"] + [n.strip() for n in args.levers.split(",")
                                              if n.strip()]))
  unknown = [n for n in names if n not in LEVERS]
  if unknown:
    raise SystemExit(f"error: --levers: unknown lever(s) {', '.join(unknown)}; "
                     f"known: {', '.join(LEVERS)}")
  if args.rounds < 1:
    raise SystemExit(f"error: --rounds={args.rounds}: at least one round")
  results = {n: [] for n in names}
  with tempfile.TemporaryDirectory(prefix="cloob_jax_levers_") as folder:
    for r in range(args.rounds):
      for name in names:
        own_torch = name == "baseline" or bool(_lever(name).env)
        fig = _run_one(name, args, folder, r, torch=own_torch and not args.no_torch,
                       timeout=args.timeout)
        results[name].append(fig)
        status = fig.get("error") or f"step {fig['step_s'] * 1e3:.0f} ms"
        print(f"round {r + 1} {name}: {status}", flush=True)
        if name == "baseline" and "error" in fig:
          raise SystemExit(f"error: the baseline failed in round {r + 1}: {fig['error']}")

  base = results["baseline"]
  first = base[0]
  print(f"\n{first['model']} {first['dtype']} batch {first['batch_size']} ({first['method']}), "
        f"{len(base)} round(s) of {args.steps} steps; matmul "
        f"{statistics.median(f['matmul_flops_per_s'] for f in base) / 1e9:.0f} GFLOP/s "
        "(the baseline's runs)")
  inherited = os.environ.get("XLA_FLAGS", "")
  if inherited:
    print(f"  every process also had XLA_FLAGS={inherited!r} from the environment (a lever's "
          "own flags come after, so they win)")
  torch_s = [f.get("open_clip_step_s") for f in base]
  rows = {}
  print(f"  {'lever':17s} {'devices':>7s} {'step ms by round':>17s} {'/baseline':>10s} "
        f"{'/open_clip':>11s}  what it changes")
  for name in names:
    figs, lever = results[name], _lever(name)
    # open_clip's step from the lever's own process where it ran there, else the baseline's
    ok = [(f["step_s"], b["step_s"], f.get("open_clip_step_s") if lever.env else t)
          for f, b, t in zip(figs, base, torch_s) if "error" not in f]
    row = {"description": lever.description, "xla_flags": lever.xla_flags,
           "args": list(lever.args), "env": dict(lever.env),
           "step_s": [f.get("step_s") for f in figs], "errors": [f.get("error") for f in figs]}
    if lever.env:
      row["open_clip_step_s"] = [f.get("open_clip_step_s") for f in figs]
    if ok:
      row["vs_baseline"] = statistics.median(s / b for s, b, _ in ok)
      if all(t for _, _, t in ok):
        row["vs_open_clip"] = statistics.median(s / t for s, _, t in ok)
      steps = "/".join(f"{s * 1e3:.0f}" for s, _, _ in ok)
      vs_open_clip = f"{row['vs_open_clip']:.2f}" if "vs_open_clip" in row else "-"
      row["devices"] = next(f["devices"] for f in figs if "error" not in f)
      print(f"  {name:17s} {row['devices']:7d} {steps:>17s} {row['vs_baseline']:10.2f} "
            f"{vs_open_clip:>11s}  {lever.description}")
    else:
      row["error"] = figs[0]["error"]
      print(f"  {name:17s} {'':7s} {'failed':>17s} {'':10s} {'':11s}  {row['error']}")
    rows[name] = row
  if all(torch_s):
    print("  open_clip's step by round: "
          + "/".join(f"{t * 1e3:.0f}" for t in torch_s) + " ms")
  for name, row in rows.items():
    if row.get("open_clip_step_s") and all(row["open_clip_step_s"]):
      print(f"  open_clip's step in {name}'s processes (its /open_clip is to these): "
            + "/".join(f"{t * 1e3:.0f}" for t in row["open_clip_step_s"]) + " ms")
  if args.json:
    from cloob_jax import paths  # pylint: disable=g-import-not-at-top
    paths.write_text(args.json, json.dumps({"model": first["model"],
                                            "batch_size": first["batch_size"],
                                            "dtype": first["dtype"], "method": first["method"],
                                            "inherited_xla_flags": inherited,
                                            "rounds": len(base), "steps": args.steps,
                                            "open_clip_step_s": torch_s, "levers": rows},
                                           indent=2))
