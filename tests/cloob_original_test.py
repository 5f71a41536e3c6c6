"""Original CLOOB checkpoints (ml-jku/cloob layout) import with open_clip's embeddings.

The checkpoint is built the way their training script saves one: a random (perturbed, with
calibrated BatchNorm statistics) open_clip model with QuickGELU, its keys renamed as their
`CLIPGeneral` names them under DDP (`module.`, the text tower under `transformer.`,
`logit_inv_tau`, a `logit_scale_hopfield`), in `{"epoch", "name", "state_dict", "optimizer",
"scheduler"[, "model_config_file"]}` saved with `torch.save`.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import jax  # noqa: E402
import ml_collections  # noqa: E402

from cloob_jax import eval as eval_lib  # noqa: E402
from cloob_jax import export  # noqa: E402
from cloob_jax import models  # noqa: E402
from cloob_jax.interop import cloob_original  # noqa: E402
from cloob_jax.interop import open_clip as interop  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
  from open_clip_parity_test import _perturb, _tokens  # noqa: E402
finally:
  sys.path.pop(0)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
INV_TAU = 30.0  # their README's --init-inv-tau
SCALE_HOPFIELD = 8.0
# open_clip's top-level text-tower names -> where their TextTransformer keeps them.
_TEXT = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection")


def _reference(name):
  """A random open_clip CLIP equal to our registry entry `name`, with QuickGELU as theirs."""
  config = models.get_config(name)
  v, t = config.vision, config.text
  vision_cfg = dict(image_size=v.image_size, layers=v.layers, width=v.width,
                    patch_size=getattr(v, "patch_size", None), head_width=v.head_width,
                    mlp_ratio=getattr(v, "mlp_ratio", 4.0))  # a ModifiedResNet has neither
  text_cfg = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                  heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio)
  model = open_clip.CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=True)
  model = _perturb(model, seed=sum(map(ord, name)))
  with torch.no_grad():
    model.logit_scale.fill_(math.log(1 / 0.07))  # not theirs: the import must not keep it
  return model


def _their_key(key):
  """open_clip's key -> ml-jku/cloob's CLIPGeneral under DDP."""
  if key.startswith("transformer."):  # the text Transformer, inside their TextTransformer
    key = "transformer." + key
  elif key.startswith(_TEXT):
    key = "transformer." + key
  elif key == "logit_scale":
    key = "logit_inv_tau"
  return "module." + key


def _their_checkpoint(reference, path, **extra):
  sd = {_their_key(k): v.clone() for k, v in reference.state_dict().items()}
  sd["module.logit_inv_tau"] = torch.tensor(math.log(INV_TAU))
  sd["module.logit_scale_hopfield"] = torch.tensor(math.log(SCALE_HOPFIELD))
  optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
  torch.save({"epoch": 28, "name": "cloob_test_run", "state_dict": sd,
              "optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": 28}, **extra},
             path)
  return sd


@pytest.fixture(scope="module")
def vit_tiny(tmp_path_factory):
  """(reference model, file naming its model_config_file, file naming no architecture,
  images, tokens, reference image / text embeddings)."""
  root = tmp_path_factory.mktemp("cloob_original")
  reference = _reference("ViT-tiny")
  named, bare = str(root / "epoch_28.pt"), str(root / "bare_epoch_28.pt")
  sd = _their_checkpoint(reference, named, model_config_file="ViT-tiny.json")
  _their_checkpoint(reference, bare)
  assert any(k.startswith("module.transformer.transformer.resblocks.0.") for k in sd)
  assert "module.transformer.token_embedding.weight" in sd
  config = models.get_config("ViT-tiny")
  size = config.vision.image_size
  images = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype(np.float32)
  tokens = _tokens(3, config.text.context_length, config.text.vocab_size)
  ref = _embeddings(reference, images, tokens)
  return reference, named, bare, images, tokens, ref


def _embeddings(model, images, tokens):
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)), normalize=True)
    txt = model.encode_text(torch.from_numpy(tokens.astype(np.int64)), normalize=True)
  return img.numpy(), txt.numpy()


def _ours(module, variables, images, tokens):
  apply = jax.jit(module.apply, static_argnames="method")
  return (np.asarray(apply(variables, images, method=module.encode_image)),
          np.asarray(apply(variables, tokens.astype(np.int32), method=module.encode_text)))


def _max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_import_gives_open_clip_embeddings_and_their_temperature(vit_tiny):
  _, named, bare, images, tokens, ref = vit_tiny
  module, variables = interop.load(named)  # the architecture from model_config_file
  assert module.text.quick_gelu and module.visual.quick_gelu
  diff = _max_diff(_ours(module, variables, images, tokens), ref)
  print(f"ViT-tiny original CLOOB import: max |diff| {diff:.2e}")
  assert diff <= TOL
  assert np.abs(ref[0][0] - ref[0][1]).max() > 1e-2  # the rows are not trivially equal
  # logit_inv_tau is our log(1/tau); logit_scale_hopfield is dropped, not used for it.
  np.testing.assert_allclose(float(variables["params"]["logit_scale"]), math.log(INV_TAU),
                             rtol=1e-6)
  # The same weights with the architecture from --model: bitwise the same variables.
  _, again = interop.load(bare, "ViT-tiny")
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert set(interop.read_state_dict(bare)) == set(
      k for k in vit_tiny[0].state_dict() if not k.endswith("attn_mask"))


def test_modified_resnet_imports(tmp_path):
  reference = _reference("RN-tiny")
  path = str(tmp_path / "rn_tiny.pt")
  _their_checkpoint(reference, path, model_config_file="RN-tiny.json")
  config = models.get_config("RN-tiny")
  size = config.vision.image_size
  images = np.random.default_rng(2).standard_normal((2, size, size, 3)).astype(np.float32)
  tokens = _tokens(2, config.text.context_length, config.text.vocab_size, seed=2)
  module, variables = interop.load(path, "RN-tiny-quickgelu")  # agrees with the file
  diff = _max_diff(_ours(module, variables, images, tokens), _embeddings(reference, images, tokens))
  print(f"RN-tiny original CLOOB import: max |diff| {diff:.2e}")
  assert diff <= TOL and module.text.quick_gelu


def test_eval_load_model_takes_the_file(vit_tiny):
  _, named, bare, images, tokens, ref = vit_tiny
  config = ml_collections.ConfigDict(dict(name="x", model=dict(name=None), evals={}))
  module, variables, description = eval_lib.load_model(config, checkpoint=named)
  assert "ViT-tiny" in description
  assert _max_diff(_ours(module, variables, images, tokens), ref) <= TOL
  with pytest.raises(ValueError, match=r"does not name its architecture.*:model=NAME"):
    eval_lib.load_model(config, checkpoint=bare)
  config.model.name = "RN-tiny"
  with pytest.raises(ValueError, match=r"ViT-tiny checkpoint .*asked for is RN-tiny"):
    eval_lib.load_model(config, checkpoint=named)


def test_architecture_from_openai_style_names():
  def record(name):
    c = models.get_config(name)
    v, t = c.vision, c.text
    return dict(embed_dim=c.embed_dim, image_resolution=v.image_size,
                vision_layers=list(v.layers) if c.vision.kind == "resnet" else v.layers,
                vision_width=v.width, vision_patch_size=getattr(v, "patch_size", None),
                context_length=t.context_length, vocab_size=t.vocab_size,
                transformer_width=t.width, transformer_heads=t.heads,
                transformer_layers=t.layers)
  rn50 = dict(embed_dim=1024, image_resolution=224, vision_layers=[3, 4, 6, 3], vision_width=64,
              vision_patch_size=None, context_length=77, vocab_size=49408,
              transformer_width=512, transformer_heads=8, transformer_layers=12)
  assert record("RN50") == rn50  # their RN50.json, as the registry spells it
  for name in ("RN50", "RN101", "RN50x4", "ViT-B/32", "ViT-B/16", "ViT-L/14"):
    assert cloob_original.model_from_openai_config(record(name)) == name
    # beside the state dict, with tensors for numbers as a torch checkpoint may hold them
    entries = {k: torch.tensor(v) if v is not None else v for k, v in record(name).items()}
    assert cloob_original.architecture(entries) == (name, "its OpenAI-style config entries")
  assert cloob_original.architecture({"model_config_file": "ViT-B-32.json"})[0] == "ViT-B-32"
  assert cloob_original.architecture({"model_config_file": record("RN101")})[0] == "RN101"
  assert cloob_original.architecture({"epoch": 3, "name": "run"}) is None
  with pytest.raises(ValueError, match="matches no registry model"):
    cloob_original.model_from_openai_config(dict(rn50, vision_width=96))
  with pytest.raises(ValueError, match="lacks transformer_layers"):
    cloob_original.model_from_openai_config(
        {k: v for k, v in rn50.items() if k != "transformer_layers"})
  with pytest.raises(ValueError, match="contradicts itself"):
    cloob_original.architecture(dict(rn50, model_config_file="ViT-B-32.json"))
  with pytest.raises(ValueError, match="no registry model"):
    cloob_original.architecture({"model_config_file": "RN200.json"})
  # Their names cannot say 32-wide heads: the tiny towers are named by file or --model only.
  with pytest.raises(ValueError, match="matches no registry model"):
    cloob_original.model_from_openai_config(record("ViT-tiny"))


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


def _export_binary(*args):
  return subprocess.Popen([sys.executable, "-m", "cloob_jax.export", *args], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_export_binary_to_open_clip_and_refusals(vit_tiny, tmp_path):
  _, named, bare, images, tokens, ref = vit_tiny
  # A file whose OpenAI-style entries say RN50, with --model=RN-tiny.
  rn50_entries = str(tmp_path / "rn50_entries.pt")
  torch.save({"state_dict": {"module.logit_inv_tau": torch.tensor(1.0)}, "embed_dim": 1024,
              "image_resolution": 224, "vision_layers": [3, 4, 6, 3], "vision_width": 64,
              "vision_patch_size": None, "context_length": 77, "vocab_size": 49408,
              "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12},
             rn50_entries)
  out = str(tmp_path / "out")
  refusals = {
      "another --model": ([f"--checkpoint={named}", "--model=RN-tiny"],
                          "ViT-tiny checkpoint (model_config_file 'ViT-tiny.json'), but the "
                          "architecture asked for is RN-tiny"),
      "another --model (entries)": ([f"--checkpoint={rn50_entries}", "--model=RN-tiny"],
                                    "RN50 checkpoint (its OpenAI-style config entries)"),
      "no architecture": ([f"--checkpoint={bare}"], "does not name its architecture"),
      "no architecture, wrong --model": ([f"--checkpoint={bare}", "--model=RN-tiny"],
                                         "missing key 'visual.attnpool"),
  }
  good = _export_binary(f"--checkpoint={named}", "--format=open_clip", f"--output={out}")
  procs = {case: _export_binary(*args, "--format=open_clip", f"--output={out}_{i}")
           for i, (case, (args, _)) in enumerate(refusals.items())}
  stdout, stderr = good.communicate(timeout=300)
  assert good.returncode == 0, stdout + stderr
  for case, proc in procs.items():
    _, stderr = proc.communicate(timeout=300)
    lines = stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
        case, stderr)
    assert refusals[case][1] in lines[0], (case, lines[0])
  assert sorted(os.listdir(tmp_path)) == ["out", "rn50_entries.pt"]  # refusals wrote nothing
  model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
  diff = _max_diff(_embeddings(model.eval(), images, tokens), ref)
  print(f"ViT-tiny original CLOOB -> export open_clip -> local-dir: max |diff| {diff:.2e}")
  assert diff <= TOL
  with open(os.path.join(out, export.OPEN_CLIP_CONFIG)) as f:
    assert json.load(f)["model_cfg"]["quick_gelu"] is True
  with open(os.path.join(out, export.INFO_FILE)) as f:
    info = json.load(f)
  assert info["inv_tau"] == pytest.approx(INV_TAU)
  assert info["model"] == "ViT-tiny" and info["source"] == os.path.abspath(named)
  np.testing.assert_allclose(float(model.logit_scale.detach()), math.log(INV_TAU), rtol=1e-6)
