"""The fine-tuning binary: zero-shot initialisation, training beats zero-shot, exact resume,
WiSE-FT endpoints, FLYP, outputs, and one-line refusals.

The model to fine-tune is a workdir trained by the main binary for 4 steps
(`configs/demo.py:tiny=True`: ViT-tiny), once per module. Its image embeddings are nearly
collapsed (mean cosine ~0.9), so a linear probe barely moves in a few dozen steps; end-to-end
training on the colour task is what reliably beats zero-shot here (~80% against ~11% in 300
steps). Runs of the binary use 2 virtual CPU devices and share the suite's compilation cache.
"""

import json
import os
import random
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cloob_jax import checkpoint
from cloob_jax import config_lib
from cloob_jax.evaluators import common
from cloob_jax.evaluators import zeroshot
from cloob_jax.finetune import classifier
from cloob_jax.finetune import data as data_lib
from cloob_jax.finetune import init_model
from cloob_jax.finetune import trainer
from cloob_jax.finetune import wise_ft
from cloob_jax.models import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/finetune/synthetic.py"
# End-to-end on colour: the run that beats zero-shot, and the reference for the resume test.
E2E = "tiny=True,mode=end_to_end,task=colour,steps=300,lr=0.003"
E2E_FLAGS = ["--config.log_every=1", "--config.eval_every=25", "--config.checkpoint_every=50"]


def _env(devices=2):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


@pytest.fixture(scope="module")
def init_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrained") / "workdir")
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.main",
       "--config=configs/demo.py:tiny=True,evals=False,steps=4,batch_size=16",
       f"--workdir={workdir}"], cwd=REPO, env=_env(), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return workdir


def _finetune(workdir, args, *flags, wait=True):
  cmd = [sys.executable, "-m", "cloob_jax.finetune", f"--config={CONFIG}:{args}",
         f"--workdir={workdir}", *flags]
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _series(workdir, key):
  return {r["step"]: r[key] for r in _rows(workdir) if key in r}


def _last_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max((json.loads(line)["step"] for line in f if line.strip()), default=0)


def _config(init_workdir, args="tiny=True"):
  return config_lib.load_config_file(f"{CONFIG}:workdir={init_workdir},{args}")


@pytest.fixture(scope="module")
def e2e_run(init_workdir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("e2e") / "run")
  code, out, err = _finetune(workdir, f"workdir={init_workdir},{E2E}", *E2E_FLAGS)
  assert code == 0, out + err
  return workdir


def test_step_0_classifier_makes_the_zero_shot_predictions(init_workdir):
  config = _config(init_workdir, "tiny=True,task=shape")
  init = init_model.load(config.init)
  module = init.module
  splits = data_lib.load_splits(config.data, module.visual.image_size)
  embedder = common.Embedder(module, batch_size=64, progress=False)
  variables = trainer.model_variables(init.variables["params"], init.variables["batch_stats"])

  evaluator = zeroshot.ZeroShotClassification("val", embedder, data=splits.val)
  expected = dict(evaluator.run(variables))
  expected_predictions = evaluator.predictions["top5"][:, 0]

  head = classifier.zeroshot_head(embedder, variables, splits.classnames, splits.templates)
  weights = zeroshot.class_embeddings(embedder, variables, splits.classnames, splits.templates)
  scale = np.exp(np.float32(init.variables["params"]["logit_scale"]))
  np.testing.assert_array_equal(head["kernel"], (scale * weights.T).astype(np.float32))
  np.testing.assert_array_equal(head["bias"], np.zeros(len(splits.classnames), np.float32))

  # The classifier as the train step runs it: the image tower, normalised, times the head.
  images, labels = splits.val.arrays(module.visual.image_size)
  forward = jax.jit(lambda v, h, x: classifier.logits(
      module.apply(v, inputs.normalize(x), method=module.encode_image), h))
  logits = np.asarray(forward(variables, head, images))
  np.testing.assert_array_equal(np.argmax(logits, axis=-1), expected_predictions)
  # And as the fine-tuning evals score it.
  evaluate = trainer.Evaluator(embedder, splits)
  got = evaluate(variables, head)
  np.testing.assert_array_equal(evaluate.predictions, expected_predictions)
  assert got["top1"] == expected["val/top1"]
  assert got["top1"] == np.mean(expected_predictions == labels)


def test_end_to_end_beats_zero_shot_and_writes_the_outputs(e2e_run, init_workdir):
  rows = _rows(e2e_run)
  assert rows[0]["step"] == 0 and rows[0]["val/top1"] == rows[0]["zeroshot/top1"]
  zs = rows[0]["zeroshot/top1"]
  val = _series(e2e_run, "val/top1")
  assert sorted(val) == [0] + list(range(25, 301, 25))
  assert val[300] > zs + 0.2, (zs, val)
  for key in ("loss", "learning_rate", "grad_norm", "examples_per_sec", "train_top1"):
    assert key in rows[1]
  assert os.path.exists(os.path.join(e2e_run, "config.json"))

  # WiSE-FT: the endpoints are the zero-shot and the fine-tuned classifiers, exactly.
  with open(os.path.join(e2e_run, wise_ft.JSON_FILE)) as f:
    table = json.load(f)
  assert table["alphas"] == [i / 10 for i in range(11)]
  assert table["val_top1"][0] == zs == table["zeroshot"]["top1"]
  assert table["val_top1"][-1] == val[300] == table["finetuned"]["top1"]
  assert table["best_val_top1"] == max(table["val_top1"])
  with open(os.path.join(e2e_run, wise_ft.MARKDOWN_FILE)) as f:
    assert "| 0 (zero-shot) |" in f.read()
  with open(os.path.join(e2e_run, wise_ft.PLOT_FILE), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # The export (cloob_jax.export's params format) holds the checkpoint's final model: the
  # trained image tower and the untouched text tower.
  _, final = checkpoint.restore_variables(e2e_run)
  _, pretrained = checkpoint.restore_variables(init_workdir)
  exported = np.load(os.path.join(e2e_run, trainer.EXPORT_FILE))
  with open(os.path.join(e2e_run, "finetuned.json")) as f:
    info = json.load(f)
  assert info["format"] == "params" and info["step"] == 300
  assert info["finetune"]["mode"] == "end_to_end"
  for path, value in jax.tree_util.tree_leaves_with_path(final["params"]["model"]):
    name = "params/" + "/".join(p.key for p in path)
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  model = final["params"]["model"]
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(pretrained["params"]["text"]),
                          jax.tree.leaves(model["text"])):
    assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)
  assert model["logit_scale"] == pretrained["params"]["logit_scale"]
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(pretrained["params"]["visual"]), jax.tree.leaves(model["visual"])))
  head = classifier.read_head(os.path.join(e2e_run, trainer.HEAD_FILE))
  np.testing.assert_array_equal(head["kernel"], final["params"]["head"]["kernel"])
  np.testing.assert_array_equal(head["bias"], final["params"]["head"]["bias"])


def test_sigkill_then_resume_is_bitwise_equal(e2e_run, init_workdir, tmp_path):
  workdir = str(tmp_path / "killed")
  proc = _finetune(workdir, f"workdir={init_workdir},{E2E}", *E2E_FLAGS, wait=False)
  # Killed a few steps after the step-50 checkpoint is complete (orbax writes it in the
  # background and renames its folder to '50' when done).
  saved = os.path.join(workdir, "checkpoints", "50")
  deadline = time.time() + 300
  while not os.path.isdir(saved):
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline
    time.sleep(0.01)
  target = _last_step(workdir) + random.randint(1, 10)
  while _last_step(workdir) < target:
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline
    time.sleep(0.02)
  proc.kill()
  proc.wait()
  assert _last_step(workdir) < 300, "the run ended before it was killed"
  code, out, err = _finetune(workdir, f"workdir={init_workdir},{E2E}", *E2E_FLAGS)
  assert code == 0, out + err
  assert "Resumed from the checkpoint of step" in out

  _, expected = checkpoint.restore_variables(e2e_run)
  _, resumed = checkpoint.restore_variables(workdir)
  assert jax.tree.structure(expected) == jax.tree.structure(resumed)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  ref, got = _series(e2e_run, "loss"), _series(workdir, "loss")
  assert all(got[s] == ref[s] for s in got), "the resumed run saw other batches"
  with open(os.path.join(e2e_run, wise_ft.JSON_FILE)) as f, \
       open(os.path.join(workdir, wise_ft.JSON_FILE)) as g:
    assert json.load(f)["val_top1"] == json.load(g)["val_top1"]


def test_wise_ft_interpolation_endpoints_are_exact():
  rng = np.random.default_rng(0)
  zs = {"model": {"params": {"w": rng.normal(size=(3, 4)).astype(np.float32),
                             "b": np.array([-0.0, 1.0], np.float32)}},
        "head": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)}}
  ft = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), zs)
  for alpha, endpoint in ((0.0, zs), (1.0, ft), (0, zs), (1, ft)):
    got = classifier.interpolate(zs, ft, alpha)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(endpoint)):
      assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
  half = classifier.interpolate(zs, ft, 0.25)
  for a, x, y in zip(jax.tree.leaves(half), jax.tree.leaves(zs), jax.tree.leaves(ft)):
    np.testing.assert_array_equal(a, np.float32(0.75) * x + np.float32(0.25) * y)
  with pytest.raises(ValueError):
    wise_ft.check_alphas([0.5, 1.5])


def test_linear_probe_trains_the_head_only(init_workdir, tmp_path):
  workdir = str(tmp_path / "probe")
  code, out, err = _finetune(workdir, f"workdir={init_workdir},tiny=True,mode=linear_probe,"
                             "steps=5,lr=0.1", "--config.wise_ft.alphas=(0.0,1.0)")
  assert code == 0, out + err
  _, pretrained = checkpoint.restore_variables(init_workdir)
  _, final = checkpoint.restore_variables(workdir)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(pretrained["params"]),
                          jax.tree.leaves(final["params"]["model"])):
    assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)
  written = classifier.read_head(os.path.join(workdir, trainer.HEAD_FILE))
  np.testing.assert_array_equal(written["kernel"], final["params"]["head"]["kernel"])
  config = _config(init_workdir)
  init = init_model.load(config.init)
  splits = data_lib.load_splits(config.data, init.module.visual.image_size)
  embedder = common.Embedder(init.module, batch_size=64, progress=False)
  zs_head = classifier.zeroshot_head(embedder, {"params": init.variables["params"]},
                                     splits.classnames, splits.templates)
  assert np.abs(final["params"]["head"]["kernel"] - zs_head["kernel"]).max() > 0.05
  with open(os.path.join(workdir, wise_ft.JSON_FILE)) as f:
    table = json.load(f)
  assert table["alphas"] == [0.0, 1.0]
  assert table["val_top1"] == [_series(workdir, "zeroshot/top1")[0],
                               _series(workdir, "val/top1")[5]]


def test_flyp_with_cloob_runs_and_evaluates(init_workdir, tmp_path):
  workdir = str(tmp_path / "flyp")
  code, out, err = _finetune(workdir, f"workdir={init_workdir},tiny=True,mode=flyp,"
                             "method=cloob,steps=6", "--config.log_every=3",
                             "--config.eval_every=3", "--config.wise_ft.alphas=(0.0,0.5,1.0)")
  assert code == 0, out + err
  val = _series(workdir, "val/top1")
  assert sorted(val) == [0, 3, 6]
  assert val[0] == _series(workdir, "zeroshot/top1")[0]
  loss = _series(workdir, "loss")
  assert sorted(loss) == [3, 6] and all(np.isfinite(v) for v in loss.values())
  _, pretrained = checkpoint.restore_variables(init_workdir)
  _, final = checkpoint.restore_variables(workdir)
  assert "head" not in final["params"]  # rebuilt from the text tower at every eval
  for tower in ("visual", "text"):
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(pretrained["params"][tower]),
        jax.tree.leaves(final["params"]["model"][tower]))), tower
  # The head written at the end is the zero-shot head of the fine-tuned towers.
  config = _config(init_workdir)
  init = init_model.load(config.init)
  splits = data_lib.load_splits(config.data, init.module.visual.image_size)
  embedder = common.Embedder(init.module, batch_size=64, progress=False)
  head = classifier.zeroshot_head(embedder, {"params": final["params"]["model"]},
                                  splits.classnames, splits.templates)
  written = classifier.read_head(os.path.join(workdir, trainer.HEAD_FILE))
  np.testing.assert_allclose(written["kernel"], head["kernel"], rtol=0, atol=1e-5)
  with open(os.path.join(workdir, wise_ft.JSON_FILE)) as f:
    table = json.load(f)
  assert table["val_top1"][0] == val[0] and table["val_top1"][-1] == val[6]
  assert table["mode"] == "flyp" and table["method"] == "cloob"


def test_bad_input_is_one_line_and_exit_2(init_workdir, tmp_path):
  cases = {
      "mode": (f"workdir={init_workdir},mode=probe", "config.mode='probe'"),
      "task": (f"workdir={init_workdir},task=shapes", "config.data.train.task='shapes'"),
      "workdir": (f"workdir={tmp_path / 'nowhere'}", "config.json not found"),
      "step": (f"workdir={init_workdir},step=3", "no checkpoint for step 3"),
      "file": (f"checkpoint={tmp_path / 'none.safetensors'},model=ViT-tiny", "does not exist"),
      "both": (f"workdir={init_workdir},checkpoint=x.safetensors,model=ViT-tiny",
               "give exactly one of"),
  }
  procs = {name: _finetune(str(tmp_path / name), args, wait=False)
           for name, (args, _) in cases.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, (name, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert cases[name][1] in lines[0], (name, lines[0])
    assert not os.path.exists(tmp_path / name), name


def test_checkpoint_file_initialises_like_its_workdir(init_workdir, tmp_path):
  from cloob_jax import export
  out = str(tmp_path / "open_clip")
  export.run(fmt="open_clip", output=out, workdir=init_workdir)
  train_config = checkpoint.load_config(init_workdir)
  config = _config(init_workdir)
  config.init.workdir = ""
  config.init.checkpoint = os.path.join(out, export.OPEN_CLIP_WEIGHTS)
  config.init.model = train_config.model.name
  config.init.overrides = train_config.model.overrides
  from_file = init_model.load(config.init)
  from_workdir = init_model.load(_config(init_workdir).init)
  assert from_file.model_config == from_workdir.model_config
  for a, b in zip(jax.tree.leaves(from_workdir.variables), jax.tree.leaves(from_file.variables)):
    np.testing.assert_array_equal(a, b)


def test_class_folder_split_and_stream_resume(tmp_path):
  from PIL import Image
  root = tmp_path / "folder"
  rng = np.random.default_rng(0)
  for c, name in enumerate(("red_apple", "green_pear", "blue_plum")):
    (root / name).mkdir(parents=True)
    for i in range(10):
      pixels = np.full((40, 50, 3), 40, np.uint8)
      pixels[..., c] = 200 + rng.integers(0, 50)
      Image.fromarray(pixels).save(root / name / f"{i}.png")
  config = config_lib.load_config_file(
      f"configs/finetune/dataset.py:workdir=unused,path={root},val_fraction=0.3")
  splits = data_lib.load_splits(config.data, 16)
  assert splits.classnames == ("blue plum", "green pear", "red apple")
  assert (len(splits.train), len(splits.val)) == (21, 9)
  assert not set(splits.train.indices) & set(splits.val.indices)
  again = data_lib.load_splits(config.data, 16)
  np.testing.assert_array_equal(again.val.indices, splits.val.indices)

  def stream():
    return data_lib.create_train_iterator(splits, global_batch_size=8, image_size=16, seed=3,
                                          context_length=16, process_index=0, process_count=1)

  first = stream()
  batches = [next(first) for _ in range(2)]
  state = first.get_state()
  rest = [next(first) for _ in range(4)]  # past the end of the first epoch
  resumed = stream()
  resumed.set_state(state)
  for want in rest:
    got = next(resumed)
    for key in ("image", "label", "tokens"):
      np.testing.assert_array_equal(got[key], want[key])
  assert batches[0]["image"].shape == (8, 16, 16, 3) and batches[0]["tokens"].shape == (8, 16)
  labels = np.concatenate([b["label"] for b in batches + rest])
  assert set(labels) == {0, 1, 2}
  # FLYP's caption of an example: one of the templates filled with its class name.
  from cloob_jax.data import tokenizer
  from cloob_jax.evaluators import prompts
  for batch in batches:
    for label, tokens in zip(batch["label"], batch["tokens"]):
      captions = [prompts.fill(t, splits.classnames[label]) for t in splits.templates]
      assert any((tokens == row).all() for row in tokenizer.tokenize(captions, 16))
