"""`python -m cloob_jax.experiments.sweep`: the same number of tuning runs per method on
seeds disjoint from the final ones, selection on validation eval data only, fresh seeds at
every budget, a report with intervals, and a re-run that trains nothing again."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax.experiments import study_report
from cloob_jax.experiments import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo.py:tiny=True,steps=4,batch_size=16"


def _run(workdir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, "-m", "cloob_jax.experiments.sweep", f"--config={CONFIG}",
         "--methods=clip,siglip", "--trials=2", "--seeds=2", "--budgets=0.5,1",
         f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  return proc.stdout


def _config(workdir, *parts):
  with open(os.path.join(workdir, *parts, "config.json")) as f:
    return json.load(f)


def test_sweep_tunes_alike_selects_on_validation_and_reports(tmp_path):
  workdir = str(tmp_path / "sweep")
  out = _run(workdir)
  assert out.count("training (") == 2 * (2 + 2 * 2), out  # per method: 2 trials, 2 seeds x 2
  with open(os.path.join(workdir, "report.json")) as f:
    summary = json.load(f)
  assert summary["budgets"] == {"0.5": 2, "1": 4}
  for method in ("clip", "siglip"):
    assert [g["seed"] for g in summary["grid"][method]] == [1000, 1001]
    assert summary["cost"][method]["tuning_runs"] == 2
    assert summary["cost"][method]["final_steps"] == 2 * 2 + 2 * 4
    # Tuning runs see the evals' data with moved seeds; final runs the config's own.
    tune = _config(workdir, "tune", method, "trial1")
    final = _config(workdir, "final", method, "steps4", "seed1")
    assert tune["seed"] == 1001 and final["seed"] == 1 and final["total_steps"] == 4
    assert tune["evals"]["colour"]["data"]["seed"] == sweep.VALIDATION_SEED_OFFSET
    assert final["evals"]["colour"]["data"]["seed"] == 0
    # The chosen trial is the best validation score, and its settings reach every final run.
    scores = [g["score"] for g in summary["grid"][method]]
    chosen = summary["chosen"][method]
    assert chosen["trial"] == int(np.argmax(scores))
    for key, value in chosen["settings"].items():
      node = final
      for part in key.split("."):
        node = node[part]
      assert node == pytest.approx(value), key
    # The table is the final runs' own test metrics.
    values = [r["metrics"]["colour/top1"] for r in summary["final"][method]["4"]]
    assert summary["table"]["colour/top1"][method]["mean"] == pytest.approx(np.mean(values))
  assert summary["grid"]["siglip"][1]["settings"]["init_bias"] in (-10.0, -5.0, 0.0)
  assert "init_bias" not in summary["grid"]["clip"][1]["settings"]
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "## Tuning grid" in report and "## Learning curves" in report, report
  # Neither CLIP nor SigLIP has a Hopfield retrieval, and the tiny demo runs no attribute probe.
  assert all(g["diagnostics"] == {} for m in ("clip", "siglip") for g in summary["grid"][m])
  assert "| — | — | — |" in report, report
  assert "| colour (top-1), chance 12.5 |" in report, report
  assert os.path.getsize(os.path.join(workdir, "report.png")) > 0
  # Re-running the same command reuses every finished run.
  again = _run(workdir)
  assert "training (" not in again and again.count("finished before, reused") == 12, again


def test_interval_and_verdict():
  c = study_report.interval([1.0, 2.0, 3.0])
  assert (c["mean"], c["std"], c["n"]) == (2.0, 1.0, 3)
  assert c["high"] - c["mean"] == pytest.approx(4.303 / np.sqrt(3))
  apart = {"a": study_report.interval([0.9, 0.91]), "b": study_report.interval([0.1, 0.11])}
  assert study_report.verdict("x/top1", apart) == "**a**, clear of the others"
  close = {"a": study_report.interval([0.5, 0.7]), "b": study_report.interval([0.4, 0.6])}
  assert study_report.verdict("x/top1", close).startswith("a ahead; 95% intervals overlap")
  assert study_report.verdict("embedding_analysis/alignment", apart).startswith("**b**")


def test_spaces_are_each_methods_own_knobs_and_seeded():
  keys = {m: [k for k, _ in sweep.space(m)] for m in ("clip", "cloob", "siglip")}
  assert keys["clip"] == ["optimizer.lr", "learn_inv_tau", "inv_tau"]
  assert keys["cloob"] == keys["clip"] + ["beta"]
  assert keys["siglip"] == keys["clip"] + ["init_bias"]
  own = config_lib.load_config_file("configs/demo.py:tiny=True", method="cloob", seed=0)
  assert sweep.trial_settings("cloob", 0, own) == {
      "optimizer.lr": 1e-3, "learn_inv_tau": False, "inv_tau": 30.0, "beta": 8.0}
  assert sweep.trial_settings("cloob", 3, own) == sweep.trial_settings("cloob", 3, own)
  assert sweep.trial_settings("cloob", 3, own) != sweep.trial_settings("cloob", 4, own)


def test_a_config_without_seeded_evals_is_refused():
  config = config_lib.load_config_file("configs/demo.py:tiny=True,evals=False", method="clip",
                                       seed=0)
  with pytest.raises(errors.UserError, match="validation split"):
    sweep.validation_evals(config)


def test_width_grid_gives_every_method_eight_distinct_settings_that_reach_the_config():
  grids = {m: [sweep.trial_settings(m, k, None, grid="width") for k in range(8)]
           for m in ("clip", "infoloob", "cloob")}
  for method, settings in grids.items():
    assert len(sweep.GRIDS["width"](method)) == 8
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == 8, method
    assert [s["model.overrides.embed_dim"] for s in settings] == [64] * 4 + [256] * 4
  # CLOOB: beta in {2, 4, 8, 16} at 1/tau = 30 fixed; the others: lr x 1/tau, no beta.
  assert [s["beta"] for s in grids["cloob"][:4]] == [2.0, 4.0, 8.0, 16.0]
  assert {(s["inv_tau"], s["learn_inv_tau"]) for s in grids["cloob"]} == {(30.0, False)}
  assert all("beta" not in s for s in grids["clip"] + grids["infoloob"])
  assert {(s["optimizer.lr"], s["learn_inv_tau"]) for s in grids["clip"]} == {
      (1e-3, False), (1e-3, True), (2e-3, False), (2e-3, True)}
  run = sweep.Run("tune", "cloob", 1005, 4, grids["cloob"][5], "unused", trial=5)
  spec, _ = sweep._split_spec(CONFIG)  # pylint: disable=protected-access
  config = sweep._build(spec, run, ())  # pylint: disable=protected-access
  assert config.model.overrides.embed_dim == 256 and config.beta == 4.0
  assert config.evals.colour.data.seed == sweep.VALIDATION_SEED_OFFSET


def test_an_unknown_grid_is_refused_before_any_run(tmp_path):
  from cloob_jax import errors  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.UserError, match=r"^--grid='nope': unknown grid; choose one of"):
    sweep.sweep(CONFIG, ["clip"], 1, 1, [1.0], str(tmp_path / "w"), grid="nope")
  assert not os.path.exists(tmp_path / "w")


def test_the_grid_table_shows_the_retrieval_and_the_attribute_probes():
  logged = {"hopfield/image_memory/patterns": 3.24, "hopfield/text_memory/patterns": 5.1,
            "hopfield/image_memory/cos_mean": 0.5, "hopfield/text_memory/cos_mean": 0.61,
            "attribute_probe/image/colour/top1": 0.9, "attribute_probe/image/size/top1": 0.7,
            "attribute_probe/text/colour/top1": 0.5, "attribute_probe/text/size/top1": 0.5}
  assert study_report._grid_diagnostics(logged) == (  # pylint: disable=protected-access
      "3.2 / 5.1", "0.50 / 0.61", "80.0 / 50.0")
  assert study_report._grid_diagnostics({}) == ("—", "—", "—")  # pylint: disable=protected-access


def test_a_metric_only_some_methods_log_gets_no_cells_or_verdict_for_the_others(tmp_path):
  # CLOOB logs its retrieval's statistics, CLIP has none: CLIP's cell is "—" (not a NaN mean
  # that would sort first), and descriptions such as patterns get no verdict.
  def result(top1, patterns=None):
    metrics = {"colour/top1": top1}
    if patterns is not None:
      metrics["hopfield/image_memory/patterns"] = patterns
    return {"metrics": metrics, "wall_seconds_last_session": 1.0}

  final = {"clip": {4: [result(0.9), result(0.92)]},
           "cloob": {4: [result(0.5, 3.0), result(0.6, 5.0)]}}
  grid = {m: [dict(trial=0, seed=1000, settings={}, score=0.5, wall_seconds=1.0,
                   diagnostics={})] for m in final}
  summary = study_report.write(
      str(tmp_path), command="cmd", config_spec="configs/demo.py", methods=["clip", "cloob"],
      tasks=["colour"], base_steps=4, tuning_steps=4, budgets={1.0: 4}, batch_size=16,
      grid=grid, chosen={m: {"trial": 0, "score": 0.5, "settings": {}} for m in final},
      final=final, chance={"colour": 0.125})
  assert sorted(summary["table"]["hopfield/image_memory/patterns"]) == ["cloob"]
  assert summary["table"]["hopfield/image_memory/patterns"]["cloob"]["mean"] == 4.0
  report = (tmp_path / "report.md").read_text()
  row = next(line for line in report.splitlines() if line.startswith("| hopfield/"))
  assert row.startswith("| hopfield/image_memory/patterns | — | 4 ± 1.4") and row.endswith(" | — |")
  assert "| clip ahead; 95% intervals overlap with cloob |" in report  # colour: a real verdict
  assert "nan" not in report.lower()


def test_grid_and_trials_together_are_refused_in_one_line(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-m", "cloob_jax.experiments.sweep",
                         f"--config={CONFIG}", "--grid=width", "--trials=3",
                         f"--workdir={tmp_path / 'w'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert proc.returncode == 2 and errors == [
      "error: --trials=3 with --grid=width: a grid's size is its number of trials; give one of "
      "them"], proc.stderr
  assert not os.path.exists(tmp_path / "w")
