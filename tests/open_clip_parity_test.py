"""Our towers equal open_clip's, weight for weight, on randomly initialised models."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import jax  # noqa: E402

from cloob_jax import models  # noqa: E402
from cloob_jax.interop import open_clip as interop  # noqa: E402

TOL = 1e-4


def _reference(name: str):
  """A randomly initialised open_clip model matching our registry entry `name`."""
  config = models.get_config(name)
  if name in ("RN50", "ViT-B/32"):
    return open_clip.create_model(name.replace("/", "-"), pretrained=None)
  v, t = config.vision, config.text
  vision_cfg = dict(image_size=v.image_size, layers=v.layers, width=v.width,
                    patch_size=getattr(v, "patch_size", None), head_width=v.head_width,
                    mlp_ratio=getattr(v, "mlp_ratio", 4.0))  # a ModifiedResNet has neither
  text_cfg = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                  heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio)
  return open_clip.CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=config.quick_gelu)


def _perturb(model, seed=0):
  """Moves every weight off its init (e.g. bn3's zeros) so that every parameter influences the
  output and a wrongly mapped one shows; then sets BatchNorm running statistics from a batch of
  inputs (as training would), so that eval-mode activations keep their scale through the net."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("logit_scale"):
        continue
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1 and ("bn" in name or "ln" in name or "downsample.1" in name):
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      else:
        p.add_(0.02 * noise)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if batch_norms:
      for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
      size = model.visual.image_size
      size = size[0] if isinstance(size, (tuple, list)) else size
      model.train()
      model.encode_image(torch.randn((8, 3, size, size), generator=gen))
  return model.eval()


def _tokens(n, context, vocab, seed=0):
  """Rows like the tokenizer's: start, random ids, end (the highest id), zero padding."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((n, context), np.int64)
  for i in range(n):
    length = int(rng.integers(0, context - 1))
    tokens[i, 0] = vocab - 2
    tokens[i, 1:length + 1] = rng.integers(1, vocab - 2, size=length)
    tokens[i, length + 1] = vocab - 1
  return tokens


@pytest.mark.parametrize("name", ["RN-tiny", "ViT-tiny", "RN50", "ViT-B/32"])
def test_embeddings_match_open_clip(name):
  config = models.get_config(name)
  reference = _perturb(_reference(name))
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables = interop.convert_state_dict(state_dict, name)
  module = models.create_model(name)

  size = config.vision.image_size
  images = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype(np.float32)
  tokens = _tokens(3, config.text.context_length, config.text.vocab_size)
  with torch.no_grad():
    ref_img = reference.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                     normalize=True).numpy()
    ref_txt = reference.encode_text(torch.from_numpy(tokens), normalize=True).numpy()
  apply = jax.jit(module.apply, static_argnames="method")
  img = np.asarray(apply(variables, images, method=module.encode_image))
  txt = np.asarray(apply(variables, tokens.astype(np.int32), method=module.encode_text))
  img_diff, txt_diff = np.abs(img - ref_img).max(), np.abs(txt - ref_txt).max()
  print(f"{name}: max |image diff| {img_diff:.2e}, max |text diff| {txt_diff:.2e}")
  assert img_diff <= TOL and txt_diff <= TOL
  # The outputs are not trivially equal (e.g. all-constant): rows differ from each other.
  assert np.abs(img[0] - img[1]).max() > 1e-2 and np.abs(txt[0] - txt[1]).max() > 1e-2


@pytest.mark.parametrize("name", ["RN50", "RN101", "RN50x4", "ViT-B/32", "ViT-B/16", "ViT-L/14"])
def test_parameter_count_matches_open_clip(name):
  with torch.device("meta"):
    reference = open_clip.create_model(name.replace("/", "-"), pretrained=None, device="meta")
  expected = sum(p.numel() for p in reference.parameters())
  assert models.count_params(models.create_model(name)) == expected


def test_registry_counts_quoted_in_the_issue():
  assert models.count_params(models.create_model("RN50")) == 102_007_137
  assert models.count_params(models.create_model("ViT-B/32")) == 151_277_313


def test_mismatched_state_dict_is_refused_by_key():
  reference = _reference("ViT-tiny")
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  missing = dict(state_dict)
  del missing["visual.ln_post.weight"]
  with pytest.raises(ValueError, match="missing key 'visual.ln_post.weight'"):
    interop.convert_state_dict(missing, "ViT-tiny")
  extra = dict(state_dict, **{"visual.head.weight": np.zeros(3)})
  with pytest.raises(ValueError, match="unexpected key 'visual.head.weight'"):
    interop.convert_state_dict(extra, "ViT-tiny")
  misshaped = dict(state_dict, **{"visual.proj": np.zeros((64, 32), np.float32)})
  with pytest.raises(ValueError, match=r"'visual.proj' has shape \(64, 32\)"):
    interop.convert_state_dict(misshaped, "ViT-tiny")
  with pytest.raises(ValueError, match=r"missing key 'visual\.attnpool\."):
    interop.convert_state_dict(state_dict, "RN-tiny")


def test_load_reads_safetensors_and_torch_files(tmp_path):
  from safetensors.numpy import save_file
  reference = _perturb(_reference("ViT-tiny"))
  state_dict = {k: v.numpy().copy() for k, v in reference.state_dict().items()}
  save_file(state_dict, str(tmp_path / "w.safetensors"))
  torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in
                                         reference.state_dict().items()}}, tmp_path / "w.pt")
  _, a = interop.load(str(tmp_path / "w.safetensors"), "ViT-tiny")
  _, b = interop.load(str(tmp_path / "w.pt"), "ViT-tiny")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    interop.load(str(tmp_path / "nope.safetensors"), "ViT-tiny")
