"""gs:// workdirs and data against a real GCS-protocol server (tests/gcs_server.py).

The main binary trains `configs/demo.py:tiny=True` into gs://, is SIGKILLed, resumes and ends
bitwise equal to an uninterrupted local run; the eval binary reads that workdir back and
writes its results to gs://, and the export binary writes it to gs:// as an open_clip folder
that open_clip loads with equal embeddings; webdataset tars on gs:// convert to shards on gs://, which train
through the local cache. No
local folder named `gs:` is ever created. Bad paths get one line and exit code 2.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cloob_jax import checkpoint
from cloob_jax import paths
from cloob_jax.data import records
import gcs_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/demo.py") + ":tiny=True,evals=False,steps=20,batch_size=16"
FLAGS = ["--config.log_every=1", "--config.checkpoint_every=4"]  # as tests/train_test.py
RUN = f"gs://{gcs_server.BUCKET}/runs/tiny"


@pytest.fixture(scope="module")
def gcs():
  with gcs_server.running_emulator() as env:
    yield env


def _env(extra):
  env = dict(os.environ, **extra)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["PYTHONPATH"] = REPO
  return env


def _main(cwd, workdir, gcs, *extra, config=CONFIG, wait=True):
  cmd = [sys.executable, "-m", "cloob_jax.main", f"--config={config}", f"--workdir={workdir}",
         *FLAGS, *extra]
  proc = subprocess.Popen(cmd, cwd=cwd, env=_env(gcs), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


def _remote_steps(workdir):
  path = paths.join(workdir, "metrics.jsonl")
  try:
    text = paths.read_text(path) if paths.exists(path) else ""
  except (FileNotFoundError, OSError):
    return []
  return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def test_train_kill_resume_and_eval_on_gs(gcs, tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  reference = str(tmp_path / "reference")
  code, out = _main(cwd, reference, gcs)
  assert code == 0, out

  proc = _main(cwd, RUN, gcs, wait=False)
  deadline = time.time() + 300
  while max(_remote_steps(RUN), default=0) < 10:  # metrics reach gs:// at every log step
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() < deadline, "no step 10 on gs:// within 300 s"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_remote_steps(RUN))
  code, out = _main(cwd, RUN, gcs)
  assert code == 0, out
  assert "Resumed from the checkpoint of step" in out, out
  resumed_from = int(out.split("checkpoint of step ")[1].split()[0])
  assert 4 <= resumed_from <= killed_at

  # The resumed gs:// run equals the uninterrupted local one, bit for bit.
  _, expected = checkpoint.restore_variables(reference)
  train_config, resumed = checkpoint.restore_variables(RUN)
  assert train_config.total_steps == 20
  for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(key))
  steps = _remote_steps(RUN)
  assert steps[-1] == 20 and set(range(1, 21)) <= set(steps), steps
  listing = {p.name for p in paths.path(RUN).iterdir()}
  assert {"config.json", "metrics.jsonl", "checkpoints", "tensorboard"} <= listing, listing
  assert any(p.name.startswith("events.out.tfevents")
             for p in paths.path(paths.join(RUN, "tensorboard")).iterdir())

  # The eval binary reads the workdir back from gs:// and writes its results there.
  output = f"gs://{gcs_server.BUCKET}/evals/tiny.json"
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.eval",
       f"--config={REPO}/configs/eval/synthetic.py:n=16,retrieval_n=16,probe_n=32,progress=False",
       f"--workdir={RUN}", f"--output={output}"],
      cwd=cwd, env=_env(gcs), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  results = json.loads(paths.read_text(output))
  assert {"colour", "shape", "retrieval"} <= set(results)
  assert paths.exists(f"gs://{gcs_server.BUCKET}/evals/tiny.md")

  # The export binary reads the gs:// workdir and writes an open_clip folder to gs://, which
  # open_clip loads (after a download: local-dir: takes a local folder) with equal embeddings.
  exported = f"gs://{gcs_server.BUCKET}/exports/tiny"
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.export", f"--workdir={RUN}", "--format=open_clip",
       f"--output={exported}"], cwd=cwd, env=_env(gcs), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  _check_open_clip_embeddings(exported, train_config, resumed, tmp_path / "exported")

  assert not (cwd / "gs:").exists() and not os.path.exists(os.path.join(REPO, "gs:"))


def _check_open_clip_embeddings(remote, train_config, variables, local):
  open_clip = pytest.importorskip("open_clip")
  import torch  # pylint: disable=g-import-not-at-top
  from cloob_jax import models  # pylint: disable=g-import-not-at-top
  from cloob_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  local.mkdir()
  for item in paths.path(remote).iterdir():
    paths.download(str(item), str(local / item.name))
  module = models.create_model(train_config.model.name, **train_config.model.overrides.to_dict())
  size = module.visual.image_size
  images = np.random.default_rng(0).standard_normal((3, size, size, 3)).astype(np.float32)
  tokens = tokenizer.tokenize(["a red circle", "two blue squares", "x"],
                              module.text.context_length)
  ours = [np.asarray(module.apply(variables, images, method=module.encode_image)),
          np.asarray(module.apply(variables, tokens, method=module.encode_text))]
  model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{local}")
  model.eval()
  with torch.no_grad():
    theirs = [model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True),
              model.encode_text(torch.from_numpy(np.asarray(tokens, np.int64)), normalize=True)]
  for a, b in zip(ours, theirs):
    assert np.abs(a - b.numpy()).max() <= 1e-4


def _one_line_error(proc_out, *needles):
  lines = [line for line in proc_out.strip().splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in proc_out, proc_out
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_bad_paths_get_one_line_and_exit_2(gcs, tmp_path):
  cases = [
      (["--workdir=gcs://bucket/run"], ("gcs://", "--workdir")),
      (["--workdir=gs://no-such-bucket/run"], ("gs://no-such-bucket", "does not exist")),
      ([f"--workdir={tmp_path}/run", "--config.data.source=records",
        f"--config.data.data_dir=gs://{gcs_server.BUCKET}/shards"],
       ("config.data.data_dir", "cache_dir")),
  ]
  for flags, needles in cases:
    cmd = [sys.executable, "-m", "cloob_jax.main", f"--config={CONFIG}", *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(gcs), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _one_line_error(proc.stderr, *needles)
  assert not (tmp_path / "gs:").exists() and not (tmp_path / "gcs:").exists()


def test_convert_from_gs_to_gs_then_train_through_the_local_cache(gcs, tmp_path):
  import convert_test  # pylint: disable=g-import-not-at-top  (its webdataset tars)
  from cloob_jax.data import convert  # pylint: disable=g-import-not-at-top
  local_in = str(tmp_path / "in")
  good, bad = convert_test.make_webdataset(local_in)
  for name in sorted(os.listdir(local_in)):
    paths.upload(os.path.join(local_in, name), f"gs://{gcs_server.BUCKET}/tars/{name}")
  remote = f"gs://{gcs_server.BUCKET}/shards"
  manifest = convert.convert_webdataset(f"gs://{gcs_server.BUCKET}/tars/*.tar", remote,
                                        workers=1, progress=False)
  assert manifest["complete"] and manifest["num_records"] == len(good)
  assert [s["input"] for s in manifest["shards"]] == [
      f"gs://{gcs_server.BUCKET}/tars/{t:05d}.tar" for t in range(3)]
  assert records.read_manifest(remote) == manifest

  cache = tmp_path / "cache"
  workdir = f"gs://{gcs_server.BUCKET}/runs/records"
  code, out = _main(tmp_path, workdir, gcs, "--config.total_steps=2", "--config.batch_size=8",
                    "--config.data.source=records", f"--config.data.data_dir={remote}",
                    f"--config.data.cache_dir={cache}")
  assert code == 0, out
  (copied,) = cache.iterdir()
  assert sorted(os.listdir(copied)) == sorted(
      ["manifest.json"] + [s["file"] for s in manifest["shards"]])
  convert_test.check_output(str(copied), good, bad)  # the shards came through unchanged
  assert _remote_steps(workdir)[-1] == 2
  assert not (tmp_path / "gs:").exists()


def _upload_tree(local_root, remote_root):
  for directory, _, files in os.walk(local_root):
    for name in files:
      local = os.path.join(directory, name)
      paths.upload(local, paths.join(remote_root, os.path.relpath(local, local_root)))


@pytest.mark.parametrize("layout", ["folder", "clip_benchmark"])
def test_eval_data_on_gs_reads_as_the_local_copy(gcs, tmp_path, layout):
  import eval_sources_test as make  # pylint: disable=g-import-not-at-top  (its dataset writers)
  from cloob_jax.evaluators import sources  # pylint: disable=g-import-not-at-top
  local = tmp_path / layout
  if layout == "folder":
    make._make_folder(local, ["cat_face", "Dog", "PolarBear"], per_class=3)
  else:
    make._make_clip_benchmark(local)
  remote = f"gs://{gcs_server.BUCKET}/evaldata/{layout}"
  _upload_tree(str(local), remote)
  assert sources.detect_source(remote, "test") == layout
  here = sources.classification_source(dict(path=str(local)), 16)
  there = sources.classification_source(dict(path=remote), 16)
  assert there.classnames == here.classnames and there.templates == here.templates
  images_here, labels_here, _ = make._collect(here)
  images_there, labels_there, _ = make._collect(there)
  assert labels_there == labels_here
  np.testing.assert_array_equal(images_there, images_here)
