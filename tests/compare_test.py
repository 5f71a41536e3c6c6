"""`python -m cloob_jax.experiments.compare`: every (method, seed) trained once, a report of
mean ± std, finished runs reused and unfinished ones completed on a re-run."""

import json
import os
import subprocess
import sys

import pytest

from cloob_jax import config_lib
from cloob_jax.experiments import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo.py:tiny=True,steps=4,batch_size=16"


def _run(workdir, *extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  cmd = [sys.executable, "-m", "cloob_jax.experiments.compare", f"--config={CONFIG}",
         "--methods=clip,cloob", "--seeds=2", f"--workdir={workdir}", *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  return proc.stdout


def test_compare_writes_a_report_and_reuses_finished_runs(tmp_path):
  workdir = str(tmp_path / "cmp")
  out = _run(workdir)
  assert out.count("training (") == 4, out
  for name in ("report.md", "report.json", "report.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "**2 seeds**" in report and "4 steps of batch 16" in report, report
  assert "| zero-shot colour (top-1) |" in report and "| image eff. eigenvalues |" in report
  assert "| class cosine, shape |" in report, report
  assert "| mean cosine in the last batch, captions |" in report, report
  assert "python -m cloob_jax.main --config=configs/demo.py:tiny=True,steps=4,batch_size=16," \
         "method=cloob,seed=1 --workdir=" in report, report
  with open(os.path.join(workdir, "report.json")) as f:
    summary = json.load(f)
  # The report's numbers are the runs' own final metrics, averaged.
  runs = summary["runs"]["cloob"]
  values = [r["metrics"]["colour/top1"] for r in runs]
  assert len(values) == 2
  assert summary["rows"]["colour/top1"]["cloob"]["mean"] == pytest.approx(sum(values) / 2)
  assert summary["rows"]["colour/top1"]["cloob"]["n"] == 2
  for method in ("clip", "cloob"):
    for seed in (0, 1):
      with open(os.path.join(workdir, method, f"seed{seed}", "config.json")) as f:
        cfg = json.load(f)
      assert (cfg["method"], cfg["seed"], cfg["data"]["seed"]) == (method, seed, seed)

  # Interrupted after training but before its results were recorded: the re-run finds the
  # final checkpoint, records the results without training again, and reuses the rest.
  os.remove(os.path.join(workdir, "cloob", "seed1", compare.DONE_FILE))
  before = os.path.getsize(os.path.join(workdir, "cloob", "seed1", "metrics.jsonl"))
  out = _run(workdir)
  assert out.count("finished before, reused") == 3 and out.count("training (") == 1, out
  assert os.path.getsize(os.path.join(workdir, "cloob", "seed1", "metrics.jsonl")) == before
  with open(os.path.join(workdir, "report.json")) as f:
    again = json.load(f)
  assert again["rows"]["colour/top1"] == summary["rows"]["colour/top1"]


def test_compare_refuses_bad_input_before_training(tmp_path):
  with pytest.raises(ValueError, match="unknown method 'clop'"):
    compare.compare(CONFIG, ["clip", "clop"], 1, str(tmp_path))
  with pytest.raises(ValueError, match="sets \\['method'\\]"):
    compare.compare("configs/demo.py:method=clip", ["clip"], 1, str(tmp_path))
  with pytest.raises(KeyError, match="no field 'data.caption_mentoin'.*'caption_mention'"):
    compare.compare(CONFIG, ["clip"], 1, str(tmp_path),
                    overrides=["data.caption_mentoin.colour=0.4"])
  with pytest.raises(ValueError, match="colour=1.5 is not a probability"):
    compare.compare(CONFIG, ["clip"], 1, str(tmp_path),
                    overrides=["data.caption_mention.colour=1.5"])
  with pytest.raises(ValueError, match="batch_size='sixteen': expected type int"):
    compare.compare(CONFIG, ["clip"], 1, str(tmp_path), overrides=["batch_size=sixteen"])
  with pytest.raises(ValueError, match="only bool, int, float and str .* ConfigDict"):
    compare.compare(CONFIG, ["clip"], 1, str(tmp_path), overrides=["model.overrides=x"])
  with pytest.raises(ValueError, match="'lr' is not KEY=VALUE"):
    compare.compare(CONFIG, ["clip"], 1, str(tmp_path), overrides=["lr"])
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.load_config_file("configs/nope.py")
  assert not os.listdir(tmp_path)


def test_a_run_stopped_by_a_signal_is_not_marked_done(tmp_path, monkeypatch):
  """SIGTERM makes train_and_evaluate save and return early; the run must stay resumable."""
  from cloob_jax import train
  config = config_lib.load_config_file(CONFIG, method="clip", seed=0)

  def stopped_at_step_2(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 2, "loss": 1.0}) + "\n")

  monkeypatch.setattr(train, "train_and_evaluate", stopped_at_step_2)
  directory = str(tmp_path / "run")
  assert compare.train_one(config, directory) is None
  assert not os.path.exists(os.path.join(directory, compare.DONE_FILE))


def test_config_overrides_reach_every_run_and_a_changed_config_is_refused(tmp_path):
  """`--config.KEY=VALUE` as for cloob_jax.main: applied to every run alike, written into the
  report's commands; re-running on that workdir with other overrides is refused untouched."""
  workdir = str(tmp_path / "cmp")
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  cmd = [sys.executable, "-m", "cloob_jax.experiments.compare", f"--config={CONFIG}",
         "--methods=clip", "--seeds=1", f"--workdir={workdir}",
         "--config.data.caption_mention.colour=0.0", "--config.optimizer.lr=0.002"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  with open(os.path.join(workdir, "clip", "seed0", "config.json")) as f:
    cfg = json.load(f)
  assert cfg["data"]["caption_mention"]["colour"] == 0.0 and cfg["optimizer"]["lr"] == 0.002
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "learning rate 0.002" in report, report
  assert ("--workdir=DIR/clip/seed0 --config.data.caption_mention.colour=0.0 "
          "--config.optimizer.lr=0.002") in report, report
  assert "--config.data.caption_mention.colour=0.0 --config.optimizer.lr=0.002" in \
      report.split("## Commands")[1].split("Each run")[0], report
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["overrides"] == ["data.caption_mention.colour=0.0", "optimizer.lr=0.002"]

  # The same workdir under another caption mix: refused before anything trains or is rewritten.
  before = {name: os.path.getmtime(os.path.join(workdir, name))
            for name in ("report.md", "clip/seed0/metrics.jsonl")}
  proc = subprocess.run(cmd[:-2] + ["--config.data.caption_mention.colour=0.5"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode != 0
  assert "clip/seed0 was trained with a different config (data.caption_mention.colour: " \
         "0.0 -> 0.5)" in proc.stderr, proc.stderr[-4000:]
  assert before == {name: os.path.getmtime(os.path.join(workdir, name)) for name in before}
