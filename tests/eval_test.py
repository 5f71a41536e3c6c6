"""The eval binary end to end: open_clip checkpoint, workdir, paper and synthetic configs."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from absl import flags
from PIL import Image

from cloob_jax import eval as eval_lib
from cloob_jax import models
from cloob_jax.data import transforms
from cloob_jax.evaluators import classnames

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("circle", "square", "triangle")
TEMPLATES = ("a photo of a {}.", "a drawing of a {c} shape.")


def _reference_vit_tiny(seed=0):
  """A random open_clip.CLIP shaped like our 'ViT-tiny', with every weight moved off its init."""
  config = models.get_config("ViT-tiny")
  v, t = config.vision, config.text
  torch.manual_seed(seed)  # the constructor's init draws from the global generator
  model = open_clip.CLIP(
      config.embed_dim,
      dict(image_size=v.image_size, layers=v.layers, width=v.width, patch_size=v.patch_size,
           head_width=v.head_width, mlp_ratio=v.mlp_ratio),
      dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
           heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio),
      quick_gelu=config.quick_gelu)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not name.endswith("logit_scale"):
        p.add_(0.2 * torch.randn(p.shape, generator=gen))  # enough to vary the predictions
  return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(reference model, path of its .safetensors state dict)."""
  from safetensors.torch import save_file
  model = _reference_vit_tiny()
  path = str(tmp_path_factory.mktemp("ckpt") / "vit_tiny.safetensors")
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
  return model, path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A class-folder dataset of 32x32 PNGs (the model's size: no resampling) + a prompts file.

  Plain colours: the random model's predictions vary over them (over noise images they do not).
  """
  root = tmp_path_factory.mktemp("shapes")
  rng = np.random.default_rng(0)
  files, labels = [], []
  for c, name in enumerate(CLASSES):
    (root / "data" / name).mkdir(parents=True)
    for i in range(4):
      path = root / "data" / name / f"{i}.png"
      colour = rng.integers(0, 256, 3, dtype=np.uint8)
      Image.fromarray(np.broadcast_to(colour, (32, 32, 3)).copy()).save(path)
      files.append(str(path))
      labels.append(c)
  (root / "prompts.txt").write_text("\n".join(TEMPLATES) + "\n")
  return root, files, np.array(labels)


def _run_binary(argv):
  flag_values = eval_lib.define_flags(flags.FlagValues())
  flag_values(["eval"] + argv)
  return eval_lib.main_with_flags(flag_values)


def _open_clip_predictions(model, files):
  """open_clip's own zero-shot logits for the folder: prompt ensemble, CLIP normalisation."""
  tokenizer = open_clip.get_tokenizer("ViT-B-32")  # CLIP's BPE, context 77
  with torch.no_grad():
    weights = []
    for name in CLASSES:
      texts = [t.replace("{c}", "{}").format(name) for t in TEMPLATES]
      emb = model.encode_text(tokenizer(texts), normalize=True).mean(0)
      weights.append(emb / emb.norm())
    weights = torch.stack(weights)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    pixels = (pixels / 255.0 - np.array(transforms.CLIP_MEAN)) / np.array(transforms.CLIP_STD)
    images = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32))
    logits = model.encode_image(images, normalize=True) @ weights.T
  return logits.numpy()


def test_checkpoint_zero_shot_predictions_equal_open_clip(checkpoint, folder, tmp_path, capsys):
  model, path = checkpoint
  root, files, labels = folder
  output = str(tmp_path / "out" / "shapes.json")
  config = (f"{ROOT}/configs/eval/folder.py:path={root / 'data'},name=shapes,model=ViT-tiny,"
            f"templates={root / 'prompts.txt'},batch_size=32,write_predictions=true,"
            "progress=false")
  results = _run_binary([f"--config={config}", f"--checkpoint={path}", f"--output={output}"])

  with open(output) as f:
    written = json.load(f)
  assert written == results and set(written) == {"shapes"}
  assert set(written["shapes"]) == {"top1", "mean_per_class_recall", "class_cosine"}  # no top-5
  table = open(str(tmp_path / "out" / "shapes.md")).read()
  assert "| shapes |" in table and "| task | top1 | mean_per_class_recall | class_cosine |" in table
  assert table in capsys.readouterr().out

  logits = _open_clip_predictions(model, files)
  predictions = np.load(str(tmp_path / "out" / "shapes.predictions.npz"))
  np.testing.assert_array_equal(predictions["shapes.labels"], labels)
  ours = predictions["shapes.top5"][:, 0]
  ranked = np.sort(logits, axis=1)
  clear = ranked[:, -1] - ranked[:, -2] > 1e-4  # a near-tie could flip on rounding
  assert clear.sum() >= 10
  np.testing.assert_array_equal(ours[clear], logits.argmax(1)[clear])
  assert len(set(ours)) > 1  # not a constant prediction
  assert written["shapes"]["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_workdir_with_the_synthetic_config(checkpoint, tmp_path, monkeypatch):
  """--workdir goes through checkpoint.restore_variables (a stand-in here) and the run's model."""
  import types

  import cloob_jax
  from cloob_jax.interop import open_clip as interop
  _, path = checkpoint
  _, variables = interop.load(path, "ViT-tiny")
  calls = []

  def restore_variables(workdir, step=None):
    calls.append((workdir, step))
    return ml_collections.ConfigDict(dict(model=dict(name="ViT-tiny", overrides={}))), variables

  stand_in = types.ModuleType("cloob_jax.checkpoint")
  stand_in.restore_variables = restore_variables
  monkeypatch.setitem(sys.modules, "cloob_jax.checkpoint", stand_in)
  monkeypatch.setattr(cloob_jax, "checkpoint", stand_in, raising=False)

  workdir = str(tmp_path / "run")
  config = (f"{ROOT}/configs/eval/synthetic.py:n=16,retrieval_n=12,probe_n=24,batch_size=32,"
            "progress=false")
  results = _run_binary([f"--config={config}", f"--workdir={workdir}", "--step=7"])
  assert calls == [(workdir, 7)]
  output = os.path.join(workdir, "eval", "synthetic_step7.json")
  with open(output) as f:
    assert json.load(f) == results
  assert os.path.exists(output[:-5] + ".md")
  assert list(results) == ["colour", "shape", "size", "position", "count",
                           "heldout_combination", "retrieval", "embedding_analysis",
                           "attribute_probe", "shape_probe"]
  assert set(results["colour"]) == {"top1", "top5", "mean_per_class_recall", "class_cosine"}
  assert set(results["size"]) == {"top1", "mean_per_class_recall", "class_cosine"}
  assert results["retrieval"]["image_to_text_recall@10"] >= results["retrieval"][
      "image_to_text_recall@1"]
  assert 1 <= results["embedding_analysis"]["image_effective_eigenvalues"] <= 64
  assert set(results["shape_probe"]) == {"top1", "val_top1", "l2"}
  assert set(results["attribute_probe"]) == {
      f"{side}/{a}/top1" for side in ("image", "text")
      for a in ("colour", "shape", "size", "count", "position")}


def test_paper_config_skips_what_is_not_located(checkpoint, tmp_path):
  _, path = checkpoint
  gtsrb = tmp_path / "GTSRB"
  rng = np.random.default_rng(1)
  for c in range(43):  # the official layout: folders 00000..00042
    (gtsrb / f"{c:05d}").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
        gtsrb / f"{c:05d}" / "0.ppm")
  output = str(tmp_path / "paper.json")
  config = (f"{ROOT}/configs/eval/paper.py:model=ViT-tiny,gtsrb={gtsrb},batch_size=32,"
            "progress=false,write_predictions=true")
  results = _run_binary([f"--config={config}", f"--checkpoint={path}", f"--output={output}"])
  assert list(results) == ["gtsrb"]
  assert set(results["gtsrb"]) == {"top1", "top5", "mean_per_class_recall", "class_cosine"}
  table = open(str(tmp_path / "paper.md")).read()
  for key in ("imagenet", "imagenet_v2", "birdsnap", "country211", "flowers102", "ucf101",
              "cars"):
    assert f"- skipped {key}: not located: add :{key}=PATH_OR_TFDS_NAME" in table
  assert "ViT-tiny" in table
  predictions = np.load(str(tmp_path / "paper.predictions.npz"))
  np.testing.assert_array_equal(predictions["gtsrb.labels"], np.arange(43))
  assert len(classnames.GTSRB) == 43


def test_checkpoint_needs_a_model_name_and_one_source(tmp_path):
  config = ml_collections.ConfigDict(dict(name="x", model=dict(name=None), evals={}))
  with pytest.raises(ValueError, match="exactly one of --workdir and --checkpoint"):
    eval_lib.run(config)
  with pytest.raises(ValueError, match=":model=NAME"):
    eval_lib.run(config, checkpoint=str(tmp_path / "w.safetensors"))


def test_markdown_groups_tasks_by_metrics():
  table = eval_lib.markdown({"a": {"top1": 0.5}, "b": {"top1": 0.25, "top5": 0.5},
                             "an": {"image_effective_eigenvalues": 12.0, "alignment": 1.23456}},
                            {"c": "not located"}, title="t")
  assert "| task | top1 | top5 |\n|---|---:|---:|\n| a | 50.00 |  |\n| b | 25.00 | 50.00 |" in table
  assert "| an | 12 | 1.235 |" in table
  assert "- skipped c: not located" in table


def test_module_entry_point_parses_its_flags():
  """`python -m cloob_jax.eval` defines its flags and refuses a run without a model."""
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.eval", f"--config={ROOT}/configs/eval/folder.py"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0
  assert "exactly one of --workdir and --checkpoint" in proc.stderr
