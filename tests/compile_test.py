"""bench compile: the trainer's step compiled for a TPU slice that is not attached (libtpu's
abstract v5e:2x2), on this CPU host. One compile of the tiny model (seconds); skipped where
libtpu is not installed (the Python 3.11 CI leg)."""

import importlib.util
import json
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install \"jax[tpu]==0.12.0.1\"): no TPU compiler")

TOPOLOGY = "v5e:2x2"
BATCH = 16


@pytest.fixture(scope="module")
def tpu_step():
  """(config, lowered StableHLO text, optimised HLO text, figures) of the tiny model's train
  step for v5e:2x2, its towers at two blocks and SCAN_MIN_WIDTH 1 so that the host's (CPU)
  defaults would scan them with remat 'dots'."""
  import jax
  from cloob_jax import config_lib
  from cloob_jax import parallel
  from cloob_jax.bench import compile as bench_compile
  from cloob_jax.models import layers
  patch = pytest.MonkeyPatch()
  patch.setattr(layers, "SCAN_MIN_WIDTH", 1)
  config = config_lib.load_config_file(f"configs/demo.py:tiny=True,evals=False,batch_size={BATCH}")
  for tower in ("vision", "text"):
    config.model.overrides[tower].layers = 2
  mesh = parallel.make_mesh(devices=bench_compile.topology_devices(TOPOLOGY))
  setup, state, batch = bench_compile.train_program(config, mesh)
  lowered = setup.step.lower(state, batch)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  figures = bench_compile._figures(compiled, time.perf_counter() - t0)
  figures["choices"] = {p: bench_compile.platform_choices(setup.model_config, p)
                        for p in ("tpu", "cpu")}
  yield config, lowered.as_text(), compiled.as_text(), figures
  patch.undo()
  assert jax.default_backend() == "cpu"


def test_hbm_figures_are_present_and_below_the_chips_capacity(tpu_step):
  from cloob_jax.bench import compile as bench_compile
  memory = tpu_step[3]["memory"]
  assert memory["argument"] > 0 and memory["output"] > 0 and memory["temp"] > 0
  assert memory["alias"] > 0  # the donated state
  assert 0 < memory["total"] < bench_compile.CHIPS["v5e"].hbm_bytes
  assert tpu_step[3]["flops"] > 0


def test_the_embedding_all_gather_is_in_the_optimised_hlo(tpu_step):
  # The gathered objective all-gathers each tower's [local, d] f32 embeddings into [B, d].
  config, _, hlo, figures = tpu_step
  dim = config.model.overrides.embed_dim
  assert f"f32[{BATCH},{dim}]" in "\n".join(
      line for line in hlo.splitlines() if "all-gather" in line)
  assert figures["collectives"]["all-gather"]["ops"] >= 2
  assert figures["collectives"]["all-reduce"]["bytes"] > 0  # the gradients


def test_the_choices_follow_the_tpu_devices_not_the_cpu_host(tpu_step):
  _, lowered, _, figures = tpu_step
  assert figures["choices"]["cpu"]["vision"] == {"scan": True, "remat": "dots"}
  assert figures["choices"]["tpu"]["vision"] == {"scan": False, "remat": False}
  assert figures["choices"]["tpu"]["text"] == {"scan": False, "remat": False}
  assert "stablehlo.while" not in lowered  # unrolled: the host's default would scan


def test_the_printout_says_estimate_and_never_optimal_seconds(tpu_step, capsys):
  from cloob_jax.bench import compile as bench_compile
  chip = bench_compile.CHIPS["v5e"]
  figures = dict(tpu_step[3])
  figures["roofline"] = bench_compile.roofline(chip, figures["flops"], figures["bytes_accessed"],
                                               1e6)
  bench_compile._print_program("train step", figures, chip, chip.hbm_bytes)
  out = capsys.readouterr().out
  assert "HBM per chip, GiB: arguments" in out and "of 16.00" in out
  assert "all-gather" in out and "an estimate, not a measurement" in out
  assert figures["roofline"]["step_s"] >= figures["flops"] / chip.peak_bf16_flops


def test_collectives_are_counted_by_kind_with_their_bytes():
  from cloob_jax.bench import compile as bench_compile
  hlo = "\n".join([
      "  %ag = f32[16,32]{1,0:T(8,128)} all-gather(f32[4,32]{1,0} %x), dimensions={0}",
      "  %ags = (f32[4,32]{1,0}, f32[16,32]{1,0}) all-gather-start(f32[4,32]{1,0} %y)",
      "  %agd = f32[16,32]{1,0} all-gather-done((f32[4,32], f32[16,32]) %ags)",
      "  %ar = (bf16[8]{0}, f32[2,2]{1,0}) all-reduce(bf16[8]{0} %a, f32[2,2]{1,0} %b)",
      "  %add = f32[16,32]{1,0} add(f32[16,32]{1,0} %ag, f32[16,32]{1,0} %agd)"])
  assert bench_compile.collectives(hlo) == {"all-gather": {"ops": 2, "bytes": 2 * 16 * 32 * 4},
                                            "all-reduce": {"ops": 1, "bytes": 16 + 16}}


def test_collectives_across_slices_are_told_apart_by_their_groups():
  """Two slices of four: groups within a slice stay on ICI, a group that joins slices (the
  gradients' reduction over 'dcn', or one group of all) is timed at DCN bandwidth."""
  from cloob_jax.bench import compile as bench_compile
  hlo = "\n".join([
      "  %a = f32[256]{0} all-reduce(f32[256]{0} %x), replica_groups={{0,1,2,3},{4,5,6,7}}",
      "  %b = f32[64]{0} all-reduce(f32[64]{0} %y), replica_groups=[4,2]<=[2,4]T(1,0)",
      "  %c = f32[16]{0} all-gather(f32[2]{0} %z), replica_groups={}, dimensions={0}",
      "  %d = f32[8]{0} collective-permute(f32[8]{0} %w), source_target_pairs={{0,1},{1,2}}",
      "  %send = (f32[4,8]{1,0}, u32[]{:S(2)}, token[]) send(%f, %after-all), channel_id=4, "
      "is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type=\"ALL_REDUCE\"}"])
  assert bench_compile.replica_groups(hlo.splitlines()[1]) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  got = bench_compile.collectives(hlo, [0] * 4 + [1] * 4)
  assert got == {"all-reduce": {"ops": 3, "bytes": 4 * 352, "dcn_bytes": 4 * 96},
                 "all-gather": {"ops": 1, "bytes": 64, "dcn_bytes": 64},
                 "collective-permute": {"ops": 1, "bytes": 32, "dcn_bytes": 0}}
  assert bench_compile.collectives(hlo, [0] * 8)["all-reduce"] == {"ops": 2, "bytes": 4 * 320}
  chip = bench_compile.CHIPS["v5e"]
  r = bench_compile.roofline(chip, 0.0, 0.0, 3e6, dcn_bytes=1e6)
  assert r["ici_s"] == 2e6 / chip.ici_bytes_per_s and r["dcn_s"] == 1e6 / chip.dcn_bytes_per_s


@pytest.mark.parametrize("name", ["v5e:16", "v5e-256", "v7:2x2", "v4:2x2", "v5p:0x2x2"])
def test_a_bad_topology_is_one_error_line_listing_the_valid_forms(name, monkeypatch, capsys):
  from cloob_jax.bench import compile as bench_compile
  monkeypatch.setattr(sys, "argv", ["compile", f"--topology={name}"])
  with pytest.raises(SystemExit) as exit_info:
    bench_compile.run()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: --topology='{name}': expected v4:AxBxC")


def test_a_config_that_does_not_fit_exits_1_with_the_needs(monkeypatch, capsys, tmp_path):
  from cloob_jax.bench import compile as bench_compile
  figures = {"needs_bytes": 20 * 2**30, "capacity_bytes": 16 * 2**30}
  monkeypatch.setattr(bench_compile, "run_compile", lambda args: (figures, False))
  out = tmp_path / "figures.json"
  monkeypatch.setattr(sys, "argv", ["compile", f"--topology={TOPOLOGY}", f"--json={out}"])
  with pytest.raises(SystemExit) as exit_info:
    bench_compile.run()
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.strip() == "does not fit: needs 20.00 GiB, chip has 16.00 GiB"
  assert json.loads(out.read_text())["needs_bytes"] == figures["needs_bytes"]
