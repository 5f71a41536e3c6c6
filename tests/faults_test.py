"""Faults a pod user meets: a damaged checkpoint, a full disk, user errors, untrusted files.

Each test asserts what happens: which step a run continues from (bitwise), what the one line
says, which exit status, what is left on disk. Runs use `configs/demo.py:tiny=True` on one
device and share the suite's compilation cache. The dead-host tests are in
tests/dead_host_test.py; the converter's in tests/convert_test.py.
"""

import glob
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from cloob_jax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo.py:tiny=True,evals=False,steps=12,batch_size=16"
FLAGS = ["--config.log_every=1", "--config.checkpoint_every=4", "--config.keep_checkpoints=2"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _run(module, *args, timeout=600):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def _train(workdir, *extra):
  return _run("cloob_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *FLAGS, *extra)


def _assert_one_line_error(code, stderr, *words):
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert code == 2, stderr
  assert len(errors) == 1 and "Traceback" not in stderr, stderr
  for word in words:
    assert word in errors[0], errors[0]
  return errors[0]


def _assert_equal_variables(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _largest_array_file(workdir, step):
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_*",
                                 "d", "*"))
  return max(files, key=os.path.getsize)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted 12-step run (checkpoints 8 and 12) and its final variables."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  code, out, err = _train(workdir)
  assert code == 0, out + err
  assert checkpoint.checkpoint_steps(workdir) == [8, 12]
  return workdir, checkpoint.restore_variables(workdir)[1]


def test_damaged_latest_step_is_moved_aside_and_training_continues_bitwise(finished, tmp_path):
  reference, expected = finished
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  damaged = _largest_array_file(workdir, 12)
  with open(damaged, "r+b") as f:
    f.truncate(os.path.getsize(damaged) // 2)

  # Readers skip it when no step is named, and refuse it when it is.
  _, step, _ = checkpoint.read_variables(workdir)
  assert step == 8
  with pytest.raises(checkpoint.DamagedCheckpointError, match="step 12 is damaged"):
    checkpoint.read_variables(workdir, 12)
  code, _, err = _run("cloob_jax.export", f"--workdir={workdir}", "--step=12", "--format=params",
                      f"--output={tmp_path / 'p.npz'}")
  _assert_one_line_error(code, err, "step 12 is damaged", "state")
  assert not os.path.exists(tmp_path / "p.npz")

  # Training reports it in one line, moves it aside and continues from step 8 to the same end.
  code, out, err = _train(workdir)
  assert code == 0, out + err
  warning = [line for line in err.splitlines() if "is damaged" in line]
  assert len(warning) == 1 and "step 12" in warning[0] and "/checkpoints/12/state" in warning[0]
  assert "Resumed from the checkpoint of step 8" in out
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "12.damaged"))
  assert os.path.getsize(damaged.replace("/12/", "/12.damaged/")) > 0  # moved, not deleted
  _assert_equal_variables(expected, checkpoint.restore_variables(workdir)[1])


def test_no_intact_step_refuses_to_start_over_unless_asked(finished, tmp_path):
  reference, _ = finished
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  os.remove(os.path.join(workdir, "checkpoints", "12", "state", "_METADATA"))
  with open(glob.glob(os.path.join(workdir, "checkpoints", "8", "data", "*.json"))[0], "w") as f:
    f.write("{not json")
  code, out, err = _train(workdir)
  line = _assert_one_line_error(code, err, "no intact checkpoint", "--restart_from_scratch")
  assert "12.damaged" in line and "8.damaged" in line
  assert "_METADATA" in err and "data iterator" in err  # each damaged step's own line
  assert checkpoint.checkpoint_steps(workdir) == []

  code, out, err = _train(workdir, "--restart_from_scratch")
  assert code == 0, out + err
  assert "Resumed" not in out
  assert checkpoint.checkpoint_steps(workdir) == [8, 12]
  _assert_equal_variables(finished[1], checkpoint.restore_variables(workdir)[1])


def _can_mount_tmpfs(directory) -> bool:
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  os.makedirs(directory, exist_ok=True)
  ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", directory],
                      capture_output=True).returncode == 0
  if ok:
    subprocess.run(["umount", directory], check=True)
  return ok


def _step_bytes(workdir, step):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in
             os.walk(os.path.join(workdir, "checkpoints", str(step))) for f in files)


def test_disk_full_during_a_save_is_one_line_and_a_rerun_resumes(finished, tmp_path):
  reference, expected = finished
  mount = str(tmp_path / "disk")
  workdir = os.path.join(mount, "run")
  if _can_mount_tmpfs(mount):
    # Room for the config, the metrics and one checkpoint (step 4), not for a second one.
    size = int(_step_bytes(reference, 8) * 1.5) + (1 << 20)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount], check=True)
    try:
      code, out, err = _train(workdir)
      line = _assert_one_line_error(code, err, "could not save the checkpoint of step 8",
                                    "ENOSPC", os.path.join(workdir, "checkpoints"))
      assert "latest: 4" in line
      assert checkpoint.checkpoint_steps(workdir) == [4]
      assert glob.glob(os.path.join(workdir, "checkpoints", "8.orbax-checkpoint-tmp*"))
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(row)["step"] for row in f]  # every line whole
      assert steps == list(range(1, len(steps) + 1)) and steps[-1] >= 8
      subprocess.run(["mount", "-o", f"remount,size={size * 4}", mount], check=True)  # freed
      code, out, err = _train(workdir)
      assert code == 0, out + err
      assert "Resumed from the checkpoint of step 4" in out
      assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))  # cleaned up
      _assert_equal_variables(expected, checkpoint.restore_variables(workdir)[1])
    finally:
      subprocess.run(["umount", "-l", mount], check=False)
  else:  # not root: the same error as tensorstore words it, injected into the save of step 8
    code = f"""
import errno, sys
import orbax.checkpoint as ocp
from cloob_jax import cli, main
save = ocp.CheckpointManager.save
def full(self, step, *a, **k):
  if step == 8:
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database: Failed to write '
                     '4661248 bytes to file 8: No space left on device [os_error_code=28]')
  return save(self, step, *a, **k)
ocp.CheckpointManager.save = full
sys.argv = ['main', '--config={CONFIG}', '--workdir={workdir}'] + {FLAGS!r}
cli.run(main.main)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    _assert_one_line_error(proc.returncode, proc.stderr,
                           "could not save the checkpoint of step 8", "ENOSPC")
    assert checkpoint.checkpoint_steps(workdir) == [4]
    code, out, err = _train(workdir)
    assert code == 0 and "Resumed from the checkpoint of step 4" in out, out + err


@pytest.mark.parametrize("module,args,words", [
    ("cloob_jax.main", [f"--config={CONFIG}", "--workdir={tmp}/w", "--config.model.name=RN51"],
     ["unknown model 'RN51'"]),
    ("cloob_jax.main", [f"--config={CONFIG}", "--workdir={tmp}/w", "--config.totl_steps=3"],
     ["--config.totl_steps", "no such field"]),
    ("cloob_jax.main", ["--config=configs/nope.py", "--workdir={tmp}/w"],
     ["configs/nope.py"]),
    ("cloob_jax.main", [f"--config={CONFIG}", "--workdir={tmp}/w", "--config.data.source=records",
                        "--config.data.data_dir={tmp}/none"], ["{tmp}/none"]),
    ("cloob_jax.eval", ["--config=configs/eval/synthetic.py", "--workdir={tmp}/none"],
     ["{tmp}/none"]),
    ("cloob_jax.export", ["--workdir={tmp}/none", "--format=onnx", "--output={tmp}/o"],
     ["--format='onnx'"]),
    ("cloob_jax.finetune", ["--config=configs/finetune/synthetic.py:workdir={tmp}/none",
                            "--workdir={tmp}/ft"], ["{tmp}/none"]),
    ("cloob_jax.experiments.compare", ["--config=configs/demo.py", "--methods=clip,cloop",
                                       "--workdir={tmp}/c"], ["cloop"]),
    ("cloob_jax.data.convert", ["webdataset", "{tmp}/none-*.tar", "{tmp}/out"], ["{tmp}/none"]),
])
def test_user_errors_are_one_line(module, args, words, tmp_path):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  code, out, err = _run(module, *args)
  _assert_one_line_error(code, err, *[w.replace("{tmp}", str(tmp_path)) for w in words])


@pytest.mark.parametrize("module,args", [  # cli.run serves every absl binary; convert its own
    ("cloob_jax.main", [f"--config={CONFIG}", "--workdir={tmp}/w", "--config.model.name=RN51"]),
    ("cloob_jax.data.convert", ["webdataset", "{tmp}/none-*.tar", "{tmp}/out"]),
])
def test_traceback_flag_shows_the_trace(module, args, tmp_path):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  code, _, err = _run(module, *args, "--traceback")
  assert code != 0 and "Traceback (most recent call last)" in err, err
  assert not [line for line in err.splitlines() if line.startswith("error: ")], err


def test_untrusted_torch_files_load_weights_only(tmp_path):
  torch = pytest.importorskip("torch")
  from cloob_jax.interop import open_clip
  from cloob_jax import errors

  # A pickle that would run code when loaded: refused by weights_only, the code never runs.
  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {tmp_path / 'pwned'}",))
  evil = str(tmp_path / "evil.pt")
  torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload()}, evil)
  with pytest.raises(errors.UserError, match="refusing to unpickle"):
    open_clip.read_state_dict(evil)
  assert not os.path.exists(tmp_path / "pwned")

  # A TorchScript archive (OpenAI's .pt layout) carries code: only with the opt-in.
  scripted = str(tmp_path / "scripted.pt")
  torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), scripted)
  with zipfile.ZipFile(scripted) as archive:
    assert any("/code/" in n for n in archive.namelist())
  with pytest.raises(errors.UserError, match="TorchScript archive.*--allow_torchscript"):
    open_clip.read_state_dict(scripted)
  state = open_clip.read_state_dict(scripted, allow_torchscript=True)
  assert sorted(state) == ["bias", "weight"] and state["weight"].shape == (2, 3)

  # The binaries say the same in one line.
  code, _, err = _run("cloob_jax.export", f"--checkpoint={scripted}", "--model=ViT-tiny",
                      "--format=params", f"--output={tmp_path / 'o.npz'}")
  _assert_one_line_error(code, err, "TorchScript", "--allow_torchscript")

  # A plain state dict of tensors still loads.
  plain = str(tmp_path / "plain.pt")
  buffer = io.BytesIO()
  torch.save({"weight": torch.ones(2, 3)}, buffer)
  with open(plain, "wb") as f:
    f.write(buffer.getvalue())
  assert open_clip.read_state_dict(plain)["weight"].sum() == 6
