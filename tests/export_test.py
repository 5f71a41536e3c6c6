"""`python -m cloob_jax.export`: each format loaded by its real consumer gives our embeddings.

Models are random (every leaf drawn around its initialiser's scale, so that every weight
moves the output and a wrongly mapped one shows; BatchNorm statistics calibrated on a batch,
then jittered), built once per module. Each export is loaded by the library that consumes it
(open_clip's `local-dir:` and `create_model(pretrained=FILE)`, open_clip's
`build_model_from_openai_state_dict`, transformers' `CLIPModel` / `CLIPTokenizer`) and its
normalised embeddings of the same images and tokens are compared with our JAX model's.
"""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import jax  # noqa: E402

from cloob_jax import export  # noqa: E402
from cloob_jax import models  # noqa: E402
from cloob_jax.data import tokenizer  # noqa: E402
from cloob_jax.interop import open_clip as interop  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
# The activation each test model is built with: both kinds reach every format.
QUICK_GELU = {"RN-tiny": True, "ViT-tiny": False, "RN50": False, "ViT-B/32": True,
              "ConvNet-tiny": False}
DIFFS = {}  # (model, format) -> (max |image diff|, max |text diff|), printed at the end


def _random_leaf(rng, collection, path, shape):
  leaf = path[-1]
  if collection == "batch_stats":  # replaced by calibrated statistics below
    return np.zeros(shape) if leaf == "mean" else np.ones(shape)
  noise = rng.standard_normal(shape, dtype=np.float32)
  if leaf == "scale":  # LayerNorm / BatchNorm
    return 1.0 + 0.3 * noise
  if leaf == "bias":
    return 0.1 * noise
  if leaf == "kernel":  # Dense [in, out], Conv [h, w, in, out]: fan-in scale
    return noise / np.sqrt(np.prod(shape[:-1]))
  if leaf == "embedding":
    return 0.02 * noise
  if leaf == "logit_scale":
    return np.log(1 / 0.07) + 0.3 * noise
  if leaf in ("proj", "text_projection"):  # [width, embed_dim]
    return noise * shape[0] ** -0.5
  return noise * shape[-1] ** -0.5  # class and positional embeddings


@functools.cache
def _model(name):
  """(config, module, variables, images, tokens, image embeddings, text embeddings)."""
  import flax
  config = models.get_config(name, quick_gelu=QUICK_GELU[name])
  module = models.build(config)
  size, context = config.vision.image_size, config.text.context_length
  abstract = jax.eval_shape(lambda: module.init(
      jax.random.key(0), np.zeros((1, size, size, 3), np.float32),
      np.zeros((1, context), np.int32)))
  rng = np.random.default_rng(sum(map(ord, name)))
  flat = {(c,) + p: _random_leaf(rng, c, p, a.shape).astype(np.float32)
          for c, p, a in _leaves(abstract)}
  variables = flax.traverse_util.unflatten_dict(flat)
  if "batch_stats" in variables:
    # One train-mode pass (flax: running = 0.9 running + 0.1 batch) gives each layer's batch
    # statistics; jitter them so that they are not exactly the calibration batch's.
    calibration = rng.standard_normal((4, size, size, 3), dtype=np.float32)
    updated = jax.jit(lambda v, x: module.apply(v, x, train=True, method=module.encode_image,
                                                mutable=["batch_stats"])[1])(variables, calibration)
    batch = {(c,) + p: (np.asarray(new) - 0.9 * flat[(c,) + p]) / 0.1
             for c, p, new in _leaves(updated)}
    for key, value in batch.items():
      if key[-1] == "var":
        value = np.maximum(value, 1e-3) * rng.uniform(0.8, 1.25, value.shape)
      else:
        value = value + 0.1 * np.sqrt(np.maximum(batch[key[:-1] + ("var",)], 1e-3)) * (
            rng.standard_normal(value.shape))
      flat[key] = value.astype(np.float32)
    variables = flax.traverse_util.unflatten_dict(flat)
  # Every value on the float16 grid: OpenAI-layout loaders cast Conv/Linear weights to float16
  # on load (build_model_from_openai_state_dict, clip.load), which is then lossless.
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32).astype(np.float16)
                           .astype(np.float32), variables)
  images = rng.standard_normal((2, size, size, 3), dtype=np.float32)
  tokens = np.concatenate([tokenizer.tokenize(["a photo of a red cube", "two blue spheres"],
                                              context),
                           _random_tokens(rng, 2, context, config.text.vocab_size)])
  apply = jax.jit(module.apply, static_argnames="method")
  img = np.asarray(apply(variables, images, method=module.encode_image))
  txt = np.asarray(apply(variables, tokens, method=module.encode_text))
  assert np.abs(img[0] - img[1]).max() > 1e-2 and np.abs(txt[0] - txt[1]).max() > 1e-2
  return config, module, variables, images, tokens, img, txt


def _leaves(tree):
  from cloob_jax.interop import keymap
  return keymap.leaves(tree)


def _random_tokens(rng, n, context, vocab):
  """Rows like the tokenizer's: start, random ids, end (the highest id), zero padding."""
  tokens = np.zeros((n, context), np.int32)
  for i in range(n):
    length = int(rng.integers(0, context - 1))
    tokens[i, 0] = vocab - 2
    tokens[i, 1:length + 1] = rng.integers(1, vocab - 2, size=length)
    tokens[i, length + 1] = vocab - 1
  return tokens


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """(name, format) -> the path of that model's export, written on first use."""
  root = tmp_path_factory.mktemp("exports")
  made = {}

  def get(name, fmt):
    if (name, fmt) not in made:
      config, _, variables, *_ = _model(name)
      suffix = {"openai": ".pt", "params": ".npz"}.get(fmt, "")
      out = str(root / (name.replace("/", "-") + "_" + fmt + suffix))
      info = export.metadata(name, {"quick_gelu": config.quick_gelu}, config, variables,
                             fmt=fmt, source="random")
      export.export(variables, name, config, fmt, out, info)
      made[(name, fmt)] = out
    return made[(name, fmt)]

  yield get
  for (name, fmt), (d_img, d_txt) in sorted(DIFFS.items()):
    print(f"{name:>12} {fmt:<22} max |image diff| {d_img:.2e}  max |text diff| {d_txt:.2e}")


def _compare(name, fmt, reference_image, reference_text):
  *_, img, txt = _model(name)
  d_img = float(np.abs(img - reference_image).max())
  d_txt = float(np.abs(txt - reference_text).max())
  DIFFS[(name, fmt)] = (d_img, d_txt)
  assert d_img <= TOL and d_txt <= TOL, (name, fmt, d_img, d_txt)


def _torch_embeddings(model, images, tokens):
  model.eval()
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)), normalize=True)
    txt = model.encode_text(torch.from_numpy(tokens.astype(np.int64)), normalize=True)
  return img.float().numpy(), txt.float().numpy()


@pytest.mark.parametrize("name", ["RN-tiny", "ViT-tiny", "RN50", "ViT-B/32"])
def test_open_clip_local_dir(exports, name):
  config, _, variables, images, tokens, *_ = _model(name)
  out = exports(name, "open_clip")
  model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
  _compare(name, "open_clip local-dir", *_torch_embeddings(model, images, tokens))
  assert f"size={config.vision.image_size}" in repr(preprocess)
  with open(os.path.join(out, export.OPEN_CLIP_CONFIG)) as f:
    assert json.load(f)["model_cfg"]["quick_gelu"] == config.quick_gelu
  with open(os.path.join(out, export.INFO_FILE)) as f:
    assert json.load(f)["model_config"]["quick_gelu"] == config.quick_gelu
  if name in ("RN50", "ViT-B/32"):  # open_clip's own config, the weights file as `pretrained`
    builtin = name.replace("/", "-") + ("-quickgelu" if config.quick_gelu else "")
    model = open_clip.create_model(builtin, pretrained=os.path.join(out, export.OPEN_CLIP_WEIGHTS))
    _compare(name, "open_clip pretrained=", *_torch_embeddings(model, images, tokens))
  if name in ("RN50", "ViT-B/32"):
    return  # the bitwise round trip below runs on the tiny towers, which hold the same keys
  # Export, then our own import: the variables come back bit for bit.
  again = interop.load(os.path.join(out, export.OPEN_CLIP_WEIGHTS), name,
                       quick_gelu=config.quick_gelu)[1]
  assert jax.tree.structure(again) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_openai_state_dict(exports, name):
  from open_clip.model import build_model_from_openai_state_dict
  _, _, _, images, tokens, *_ = _model(name)
  path = exports(name, "openai")
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  assert all(isinstance(v, torch.Tensor) for v in state_dict.values())
  assert not any(k.startswith("module.") or k.endswith("attn_mask") for k in state_dict)
  # The architecture from the key shapes alone; the activation as recorded beside the file.
  with open(os.path.splitext(path)[0] + ".json") as f:
    info = json.load(f)
  model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=info["quick_gelu"])
  _compare(name, "openai build_model", *_torch_embeddings(model.float(), images, tokens))


@pytest.mark.parametrize("name", ["ViT-tiny", "ViT-B/32"])
def test_hf_clip_model(exports, name):
  transformers = pytest.importorskip("transformers")
  config, _, _, images, tokens, *_ = _model(name)
  out = exports(name, "hf")
  model, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  act = "quick_gelu" if config.quick_gelu else "gelu"
  assert model.config.text_config.hidden_act == act == model.config.vision_config.hidden_act
  model.eval()

  def features(out):  # transformers 5 returns a model output, 4.x a tensor
    out = getattr(out, "pooler_output", out)
    return torch.nn.functional.normalize(out, dim=-1).numpy()

  with torch.no_grad():
    img = features(model.get_image_features(
        pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))))
    txt = features(model.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64))))
  _compare(name, "hf CLIPModel", img, txt)
  processor = transformers.CLIPProcessor.from_pretrained(out)  # tokenizer + image processor
  assert processor.image_processor.crop_size == {"height": config.vision.image_size,
                                                 "width": config.vision.image_size}


# A caption that spells out a special token ('<end_of_text>', '<|endoftext|>') is split by
# CLIPTokenizer's added-token matcher and its hard-coded <|...|> pattern where ours is not.
_SPECIAL = re.compile(r"<\|?(start|end)_?of_?text\|?>", re.IGNORECASE)


def test_hf_tokenizer_ids_equal_ours(exports):
  transformers = pytest.importorskip("transformers")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  try:
    import tokenizer_test  # the tokenizer's test corpus: 1,200 varied captions
  finally:
    sys.path.pop(0)
  corpus = tokenizer_test.make_corpus()
  hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(exports("ViT-tiny", "hf"))
  ours = tokenizer.tokenize(corpus)

  def hf_ids(texts):
    return hf_tokenizer(texts, truncation=True, max_length=77)["input_ids"]

  def unpadded(row):
    return row[:int(np.argmax(row == tokenizer.EOT_TOKEN)) + 1].tolist()

  # CLIPTokenizer (transformers 5) normalises by NFC, whitespace and lower-case only; CLIP's
  # cleaning (ftfy, html.unescape) is ours. On cleaned text the ids are equal.
  cleaned = hf_ids([tokenizer.clean_text(t) for t in corpus])
  spelled = [bool(_SPECIAL.search(tokenizer.clean_text(t))) for t in corpus]
  differ = [i for i, t in enumerate(corpus) if unpadded(ours[i]) != cleaned[i]]
  assert not [corpus[i] for i in differ if not spelled[i]]
  # Plain ASCII text, which neither cleaning changes beyond case and spaces: equal as given.
  plain = [i for i, t in enumerate(corpus) if re.fullmatch(r"[\x20-\x7e\t\n\r]*", t)
           and "&" not in t and not spelled[i]]
  raw = hf_ids([corpus[i] for i in plain])
  assert [unpadded(ours[i]) for i in plain] == raw
  padded = hf_tokenizer([corpus[i] for i in plain], truncation=True, max_length=77,
                        padding="max_length")["input_ids"]
  assert all(p[:len(r)] == r for p, r in zip(padded, raw))  # then end-of-text padding
  print(f"tokenizer: of {len(corpus)} captions, cleaned: all {len(corpus) - sum(spelled)} "
        f"without a spelled-out special token equal, {len(differ)} of the {sum(spelled)} with "
        f"one differ; as given: all {len(plain)} plain ASCII ones equal")
  assert len(plain) > 200 and len(corpus) - sum(spelled) > 1000


def test_params_npz_is_read_back_by_jax(exports):
  import flax
  name = "ConvNet-tiny"
  config, module, variables, images, tokens, img, txt = _model(name)
  path = exports(name, "params")
  with np.load(path) as f:  # big_vision's layout: '/'-joined names, one array each
    flat = {tuple(k.split("/")): f[k] for k in f.files}
  loaded = flax.traverse_util.unflatten_dict(flat)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  apply = jax.jit(module.apply, static_argnames="method")
  np.testing.assert_array_equal(np.asarray(apply(loaded, images, method=module.encode_image)), img)
  with open(os.path.splitext(path)[0] + ".json") as f:
    info = json.load(f)
  assert info["model"] == name and info["format"] == "params"
  assert info["inv_tau"] == pytest.approx(float(np.exp(variables["params"]["logit_scale"])))
  assert {"method", "beta", "step", "source", "git_commit", "model_config"} <= set(info)


def test_a_format_registered_in_the_test_exports_through_run(exports, tmp_path, monkeypatch):
  """A new format is one module with `registry.register`: nothing else is edited. Here a toy
  one-file format (linen names in safetensors) is registered in a copy of the registry and
  exported through `export.run` from an open_clip file; the safetensors library reads it."""
  from safetensors import numpy as safetensors_numpy
  from cloob_jax.export import encode
  from cloob_jax.export import registry
  monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))

  @registry.register("linen_safetensors", suffixes=(".safetensors",), clip_towers=False,
                     load_hint=lambda name, config, out: f"load_file({out})")
  def write(variables, config, info):  # pylint: disable=unused-variable
    del config
    return encode.safetensors_bytes(dict(_linen_leaves(variables)), info)  # C order, float32

  name = "ViT-tiny"
  _, _, variables, *_ = _model(name)
  source = os.path.join(exports(name, "open_clip"), export.OPEN_CLIP_WEIGHTS)
  out = str(tmp_path / "toy.safetensors")
  written = export.run(fmt="linen_safetensors", output=out, checkpoint=source, model=name)
  assert written == [out, str(tmp_path / "toy.json")]
  loaded = safetensors_numpy.load_file(out)
  expected = dict(_linen_leaves(variables))
  assert sorted(loaded) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  assert json.loads((tmp_path / "toy.json").read_text())["format"] == "linen_safetensors"
  with pytest.raises(export.ExportError, match="ending in .safetensors"):
    export.export(variables, name, models.get_config(name), "linen_safetensors",
                  str(tmp_path / "toy.npz"), {})


def _linen_leaves(variables):
  from cloob_jax.interop import keymap
  return [("/".join((c,) + p), np.asarray(v)) for c, p, v in keymap.leaves(variables)]


def test_formats_that_cannot_hold_a_tower_are_refused(tmp_path):
  refused = [("RN-tiny", "hf", "ModifiedResNet.*open_clip, openai or params"),
             ("RN50", "hf", "ModifiedResNet"),
             ("ConvNet-tiny", "open_clip", "params only"),
             ("ConvNet-tiny", "hf", "params only"),
             ("ConvNet-tiny", "openai", "params only"),
             ("ViT-tiny", "openai", "64-wide heads"),
             ("RN-tiny", "openai", "64-wide heads"),
             ("ViT-tiny", "onnx", "unknown --format")]
  for name, fmt, message in refused:
    out = str(tmp_path / f"out_{fmt}.pt")
    with pytest.raises(export.ExportError, match=message):
      export.export({}, name, models.get_config(name), fmt, out, {})
    assert not os.listdir(tmp_path)
  for name in ("RN50", "RN101", "RN50x4", "ViT-B/32", "ViT-B/16", "ViT-L/14"):
    for fmt in ("open_clip", "openai", "params"):
      export.check_fits(name, models.get_config(name), fmt)
  for name in ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-tiny"):
    export.check_fits(name, models.get_config(name), "hf")
  for name in ("RN-tiny", "ViT-tiny"):
    export.check_fits(name, models.get_config(name), "open_clip")


def test_gs_output_goes_through_the_path_layer(tmp_path):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  try:
    import gcs_server  # a GCS-protocol server on loopback (fake-gcs-server)
  finally:
    sys.path.pop(0)
  from cloob_jax import paths
  name = "ViT-tiny"
  config, _, variables, images, tokens, *_ = _model(name)
  with gcs_server.running_emulator():
    remote = f"gs://{gcs_server.BUCKET}/exports/vit_tiny"
    export.export(variables, name, config, "open_clip", remote, {"step": 7})
    with pytest.raises(export.ExportError, match="exists; pass --overwrite"):
      export.export(variables, name, config, "open_clip", remote, {})
    export.export(variables, name, config, "open_clip", remote, {"step": 8}, overwrite=True)
    export.export(variables, name, config, "params", remote + ".npz", {"step": 8})
    local = tmp_path / "copy"
    local.mkdir()
    for item in (export.OPEN_CLIP_CONFIG, export.OPEN_CLIP_WEIGHTS, export.INFO_FILE):
      paths.download(paths.join(remote, item), str(local / item))
    assert json.loads(paths.read_text(remote + ".json"))["step"] == 8
  assert json.loads((local / export.INFO_FILE).read_text())["step"] == 8
  model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{local}")
  _compare(name, "open_clip via gs://", *_torch_embeddings(model, images, tokens))


# --------------------------------------------------------------------------- the binary


def _env(devices=1):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir trained by the main binary for 4 steps (configs/demo.py:tiny=True: ViT-tiny) on
  8 virtual devices; the export binary runs on 1 (it reads the checkpoint as numpy)."""
  workdir = str(tmp_path_factory.mktemp("run") / "workdir")
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.main",
       "--config=configs/demo.py:tiny=True,evals=False,steps=4,batch_size=16",
       f"--workdir={workdir}"], cwd=REPO, env=_env(8), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return workdir


def _export_binary(*args):
  return subprocess.Popen([sys.executable, "-m", "cloob_jax.export", *args], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_trained_workdir_exports_to_open_clip(workdir, tmp_path):
  from cloob_jax import checkpoint
  out = str(tmp_path / "demo_open_clip")
  proc = _export_binary(f"--workdir={workdir}", "--format=open_clip", f"--output={out}")
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stdout + stderr
  assert "local-dir:" in stdout
  # The reference: the training's own restore (8 devices, as this process) and model.
  train_config, variables = checkpoint.restore_variables(workdir)
  module = models.create_model(train_config.model.name, **train_config.model.overrides.to_dict())
  size = module.visual.image_size
  images = np.random.default_rng(0).standard_normal((4, size, size, 3)).astype(np.float32)
  tokens = tokenizer.tokenize(["a small red circle", "three green squares at the top", "x",
                               "a large blue triangle on the left"], module.text.context_length)
  img = np.asarray(module.apply(variables, images, method=module.encode_image))
  txt = np.asarray(module.apply(variables, tokens, method=module.encode_text))
  model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
  ref_img, ref_txt = _torch_embeddings(model, images, tokens)
  d_img, d_txt = np.abs(img - ref_img).max(), np.abs(txt - ref_txt).max()
  DIFFS[("demo workdir", "open_clip local-dir")] = (float(d_img), float(d_txt))
  assert d_img <= TOL and d_txt <= TOL
  with open(os.path.join(out, export.INFO_FILE)) as f:
    info = json.load(f)
  assert (info["method"], info["beta"], info["step"]) == ("cloob", 8.0, 4)
  assert info["inv_tau"] == pytest.approx(30.0)
  assert info["source"] == os.path.abspath(workdir)
  assert sorted(os.listdir(tmp_path)) == ["demo_open_clip"]  # no temporary left behind


def test_overwrite_replaces_an_existing_output(tmp_path):
  config, _, variables, *_ = _model("ViT-tiny")
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.txt").write_text("old")
  with pytest.raises(export.ExportError, match="exists; pass --overwrite"):
    export.export(variables, "ViT-tiny", config, "open_clip", str(out), {})
  assert os.listdir(out) == ["old.txt"]
  export.export(variables, "ViT-tiny", config, "open_clip", str(out), {"step": 1},
                overwrite=True)
  assert sorted(os.listdir(out)) == sorted([export.OPEN_CLIP_CONFIG, export.OPEN_CLIP_WEIGHTS,
                                            export.INFO_FILE])
  assert os.listdir(tmp_path) == ["out"]  # neither the temporary nor the old copy is left
  for existing in ("p.npz", "p.json"):  # a file output, or the metadata beside it
    (tmp_path / existing).write_text("old")
    with pytest.raises(export.ExportError, match=f"{existing} exists"):
      export.export(variables, "ViT-tiny", config, "params", str(tmp_path / "p.npz"), {})
    assert (tmp_path / existing).read_text() == "old"
    (tmp_path / existing).unlink()


def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, tmp_path, exports):
  vit_tiny = os.path.join(exports("ViT-tiny", "open_clip"), export.OPEN_CLIP_WEIGHTS)
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "keep.txt").write_text("mine")
  out = str(tmp_path / "out")
  cases = {
      "unknown format": ([f"--workdir={workdir}", "--format=onnx", f"--output={out}"],
                         "unknown --format='onnx'"),
      "tower the format cannot hold (hf)": (
          [f"--checkpoint={vit_tiny}", "--model=RN-tiny", "--format=hf", f"--output={out}"],
          "ModifiedResNet"),
      "tower the format cannot hold (openai)": (
          [f"--workdir={workdir}", "--format=openai", f"--output={out}.pt"], "64-wide heads"),
      "not a CLIP tower": ([f"--checkpoint={vit_tiny}", "--model=ConvNet-tiny",
                            "--format=open_clip", f"--output={out}"], "params only"),
      "missing workdir": ([f"--workdir={tmp_path / 'nope'}", "--format=params",
                           f"--output={out}.npz"], "not found"),
      "missing step": ([f"--workdir={workdir}", "--step=3", "--format=params",
                        f"--output={out}.npz"], "no checkpoint for step 3"),
      "existing output": ([f"--workdir={workdir}", "--format=open_clip",
                           f"--output={existing}"], "exists; pass --overwrite"),
      "checkpoint of another architecture": (
          [f"--checkpoint={vit_tiny}", "--model=RN-tiny", "--format=open_clip",
           f"--output={out}"], "missing key 'visual.attnpool"),
  }
  procs = {case: _export_binary(*args) for case, (args, _) in cases.items()}
  for case, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    lines = stderr.splitlines()
    assert proc.returncode == 2, (case, stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, stderr)
    assert cases[case][1] in lines[0], (case, lines[0])
  assert sorted(os.listdir(tmp_path)) == ["existing"]
  assert os.listdir(existing) == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- the README's recipe


def _readme_blocks(section):
  """The fenced code blocks of README.md's `## section`, in order: [(language, text)]."""
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"^```(\w*)\n(.*?)^```$", body, re.DOTALL | re.MULTILINE)


def test_readme_export_recipe_runs_as_written(workdir, tmp_path):
  """README's 'Export and fine-tune': its one command's exports and its PyTorch snippet, run as
  written in a fresh folder. Its training part is replaced by the workdir above (the same
  ViT-tiny, 4 steps; CLOOB rather than CLIP, which the export does not look at)."""
  (language, command), (snippet_language, snippet) = _readme_blocks("Export and fine-tune")[:2]
  assert (language, snippet_language) == ("bash", "python")
  train, *exports = command.replace("\\\n", " ").split(" && ")
  assert train.split() == ["python", "-m", "cloob_jax.main",
                           "--config=configs/demo.py:tiny=True,method=clip",
                           "--workdir=runs/demo_vit"]
  assert [e.split()[:5] for e in exports] == [
      ["python", "-m", "cloob_jax.export", "--workdir=runs/demo_vit", f"--format={fmt}"]
      for fmt in ("open_clip", "hf")]
  os.makedirs(tmp_path / "runs")
  os.symlink(workdir, tmp_path / "runs" / "demo_vit")
  bin_dir = tmp_path / "bin"  # `python` in the README is this interpreter (its venv too)
  os.makedirs(bin_dir)
  (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  (bin_dir / "python").chmod(0o755)
  env = dict(_env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
  proc = subprocess.run(["bash", "-euo", "pipefail", "-c", " && ".join(exports)], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (tmp_path / "snippet.py").write_text(snippet)
  proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  printed = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
  assert sorted(printed) == ["hf", "open_clip"], proc.stdout
  # Each prints P(caption | image) for the three captions, rounded: the same in both libraries.
  probs = {k: np.array(v.strip(" []").split(), float) for k, v in printed.items()}
  assert probs["open_clip"].shape == (3,), proc.stdout
  assert probs["open_clip"].sum() == pytest.approx(1, abs=3e-3)
  np.testing.assert_allclose(probs["open_clip"], probs["hf"], atol=2e-3)
