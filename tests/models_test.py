"""Registry, overrides, bfloat16 compute and rematerialisation of the towers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cloob_jax import errors
from cloob_jax import models


def _inputs(config, n=2):
  size = config.vision.image_size
  images = jax.random.normal(jax.random.key(0), (n, size, size, 3))
  tokens = jnp.zeros((n, config.text.context_length), jnp.int32).at[:, 0].set(49406)
  tokens = tokens.at[:, 5].set(49407).at[:, 1:5].set(jnp.arange(1, 5) * 100)
  return images, tokens


def test_registry_lists_paper_models_and_tiny_ones():
  names = models.list_models()
  for name in ["RN50", "RN101", "RN50x4", "ViT-B/32", "ViT-B/16", "ViT-L/14", "RN-tiny",
               "ViT-tiny", "ConvNet-tiny"]:
    assert name in names
  assert models.get_config("ViT-B-32") == models.get_config("ViT-B/32")  # open_clip spelling
  assert models.get_config("RN50-quickgelu").quick_gelu


def test_unknown_names_are_refused_with_a_suggestion():
  with pytest.raises(ValueError, match="Did you mean 'ViT-B/32'"):
    models.create_model("ViT-B/33")
  with pytest.raises(ValueError, match="Did you mean 'layers'"):
    models.create_model("ViT-tiny", text=dict(layer=3))
  with pytest.raises(ValueError, match="unknown model override 'dtyp'"):
    models.create_model("ViT-tiny", dtyp="bfloat16")
  with pytest.raises(ValueError, match="unknown model override vision.kind='convent'"):
    models.get_config("RN-tiny", vision=dict(kind="convent"))


@pytest.mark.parametrize("name", ["ViT-tiny", "RN-tiny", "ConvNet-tiny"])
def test_forward_shapes_and_unit_norm(name):
  config = models.get_config(name)
  model = models.create_model(name)
  images, tokens = _inputs(config)
  variables = jax.jit(model.init)(jax.random.key(1), images, tokens)
  img, txt = jax.jit(model.apply)(variables, images, tokens)
  inv_tau = jnp.exp(variables["params"]["logit_scale"])  # the bare init's temperature
  assert img.shape == txt.shape == (2, config.embed_dim)
  assert img.dtype == txt.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(inv_tau, 1 / 0.07, rtol=1e-5)


def test_resnet_train_mode_updates_batch_stats():
  config = models.get_config("RN-tiny")
  model = models.create_model("RN-tiny")
  images, tokens = _inputs(config, 4)
  variables = jax.jit(model.init)(jax.random.key(1), images, tokens)
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                method=model.encode_image))(variables, images)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", ["ViT-tiny", "RN-tiny", "ConvNet-tiny"])
def test_bfloat16_compute_keeps_float32_params_and_is_close(name):
  config = models.get_config(name)
  images, tokens = _inputs(config)
  f32 = models.create_model(name)
  bf16 = models.create_model(name, dtype="bfloat16")
  variables = jax.jit(f32.init)(jax.random.key(1), images, tokens)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(
      jax.eval_shape(bf16.init, jax.random.key(1), images, tokens)))
  a = jax.jit(f32.apply)(variables, images, tokens)
  b = jax.jit(bf16.apply)(variables, images, tokens)
  for x, y in zip(a[:2], b[:2]):
    assert y.dtype == jnp.float32  # embeddings are normalised in float32
    assert np.abs(np.asarray(x) - np.asarray(y)).max() < 0.05


@pytest.mark.parametrize("name,tower", [
    ("ViT-tiny", dict(remat=True)), ("RN-tiny", dict(remat=True)),
    ("ViT-tiny", dict(remat="dots")), ("RN-tiny", dict(remat="dots")),
    ("ViT-tiny", dict(scan=True)), ("ViT-tiny", dict(scan=True, remat=True)),
    ("ViT-tiny", dict(scan=True, remat="dots")), ("ViT-tiny", dict(scan=True, remat=False)),
    ("RN-tiny", dict(scan=True))])
def test_remat_and_scan_give_the_same_values_and_gradients(name, tower):
  # scan over layers (and remat) changes how the step runs, never the parameters or results:
  # the scanned model initialises the same tree and takes the unrolled model's parameters.
  config = models.get_config(name)
  images, tokens = _inputs(config)
  plain = models.create_model(name)
  # A ModifiedResNet has no scan: only its text tower takes one.
  other = models.create_model(name, vision=tower, text=tower) if "scan" not in tower or \
      name == "ViT-tiny" else models.create_model(name, text=tower)
  variables = jax.jit(plain.init)(jax.random.key(1), images, tokens)
  other_init = jax.jit(other.init)(jax.random.key(1), images, tokens)
  assert jax.tree.structure(other_init) == jax.tree.structure(variables)
  for x, y in zip(jax.tree.leaves(other_init), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(x, y)

  def loss(params, model):
    img, txt = model.apply({**variables, "params": params}, images, tokens)[:2]
    return jnp.sum(img @ txt.T)

  v1 = jax.jit(loss, static_argnums=1)(variables["params"], plain)
  v2 = jax.jit(loss, static_argnums=1)(variables["params"], other)
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  g1 = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], plain)
  g2 = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], other)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,tower,scan", [
    ("RN-tiny", "vision", False), ("ViT-tiny", "vision", False), ("ViT-tiny", "vision", True),
    ("ViT-tiny", "text", False), ("ViT-tiny", "text", True)])
def test_each_remat_policy_keeps_what_it_says_for_the_backward_pass(name, tower, scan):
  # What a tower keeps for the backward pass (the residuals in jax.vjp's closure), remat set
  # on that tower alone (None: the default): "dots" keeps the outputs of the weight matmuls
  # and convolutions, so more than "full" (each block's input only) and less than no remat.
  config = models.get_config(name)
  images, tokens = _inputs(config)
  kept = {}
  for remat in (None, False, "dots", "full"):
    model = models.create_model(name, **{tower: dict(remat=remat, **({"scan": True} if scan
                                                                      else {}))})
    variables = jax.jit(model.init)(jax.random.key(1), images, tokens)

    def loss(params, model=model, variables=variables):
      img, txt = model.apply({**variables, "params": params}, images, tokens)[:2]
      return jnp.sum(img @ txt.T)

    residuals = jax.eval_shape(lambda p, f=loss: jax.vjp(f, p)[1], variables["params"])
    kept[remat] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(residuals))
  assert kept["full"] < kept["dots"] < kept[False], kept
  # The default: "dots" where the blocks scan on XLA:CPU (the suite's backend), else none.
  assert kept[None] == kept["dots" if scan else False], kept


def test_an_unknown_remat_policy_is_refused_in_one_line_naming_the_tower():
  with pytest.raises(errors.UserError,
                     match=r"vision\.remat='dot': expected None, False, True, 'off' or one of "
                           r"'full', 'dots'"):
    models.get_config("ViT-tiny", vision=dict(remat="dot"))
  assert models.get_config("RN-tiny", text=dict(remat="full")).text.remat == "full"


def test_remat_none_is_dots_for_scanned_blocks_on_cpu_only(monkeypatch):
  from cloob_jax.models import layers
  assert [layers.effective_remat(r) for r in (None, False, 0, "off", True, 1, "full", "dots")] \
      == [False, False, False, False, "full", "full", "full", "dots"]
  assert layers.effective_remat(None, scanned=True) == "dots"  # the suite runs on XLA:CPU
  assert layers.effective_remat(False, scanned=True) is False
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.effective_remat(None, scanned=True) is False
  assert layers.remat_policy("dots", scanned=True) == (True, layers.REMAT_POLICIES["dots"])


def test_defaults_follow_the_platform_compiled_for_not_the_host():
  # A TPU slice's step is traced on a CPU host (bench compile): the scan and remat defaults are
  # those of the platform set by compiling_for, and the host's come back after it.
  from cloob_jax.models import layers
  assert jax.default_backend() == "cpu"
  assert layers.scans(None, 768) and layers.effective_remat(None, scanned=True) == "dots"
  with layers.compiling_for("tpu"):
    assert layers.target_platform() == "tpu"
    assert not layers.scans(None, 768)
    assert layers.effective_remat(None, scanned=True) is False
    assert layers.scans(True, 768)  # an explicit choice is kept
    with layers.compiling_for(None):
      assert layers.scans(None, 768)
  assert layers.target_platform() == "cpu" and layers.scans(None, 768)
  assert not layers.scans(None, 768, platform="gpu")


def test_a_tower_traced_for_tpu_is_unrolled_on_a_cpu_host(monkeypatch):
  from cloob_jax.models import layers
  monkeypatch.setattr(layers, "SCAN_MIN_WIDTH", 1)  # the tiny tower scans by default on CPU
  model = models.create_model("ViT-tiny")
  images, tokens = _inputs(models.get_config("ViT-tiny"))
  variables = model.init(jax.random.key(0), images, tokens)

  def primitives(fn):
    jaxpr = jax.make_jaxpr(fn)(variables, images).jaxpr
    return {str(e.primitive) for e in jaxpr.eqns}

  encode = lambda v, x: model.apply(v, x, method=model.encode_image)
  assert "scan" in primitives(encode)
  assert "scan" not in primitives(layers.for_platform(encode, "tpu"))
  assert "scan" in primitives(layers.for_platform(encode, "cpu"))


def test_scanned_towers_under_fsdp_on_8_devices_equal_one_device():
  # The scan stacks the blocks' parameters inside the step: with them FSDP-sharded over the
  # mesh and the batch split over 8 devices, values and gradients stay the unsharded ones.
  from cloob_jax import parallel
  name, scanned = "ViT-tiny", dict(scan=True)
  config = models.get_config(name)
  images, tokens = _inputs(config, n=8)
  model = models.create_model(name, vision=scanned, text=scanned)
  params = jax.jit(model.init)(jax.random.key(1), images, tokens)["params"]

  def loss(params, images, tokens):
    img, txt = model.apply({"params": params}, images, tokens)[:2]
    return jnp.sum(img @ txt.T)

  want = jax.jit(jax.value_and_grad(loss))(params, images, tokens)
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(params, parallel.state_shardings(params, mesh, fsdp=True))
  batch = jax.device_put((images, tokens), parallel.batch_sharding(mesh))
  got = jax.jit(jax.value_and_grad(loss))(sharded, *batch)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # float32 summation order
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(y).max())))


def test_scan_is_the_default_for_wide_transformers_on_cpu():
  from cloob_jax.models import layers
  on_cpu = jax.default_backend() == "cpu"
  assert layers.scans(None, 768) == on_cpu and layers.scans(None, 512) == on_cpu
  assert not layers.scans(None, 64)
  assert layers.scans(True, 64) and not layers.scans(False, 768)


def test_text_pools_at_the_end_token():
  config = models.get_config("ViT-tiny")
  model = models.create_model("ViT-tiny")
  images, tokens = _inputs(config)
  variables = jax.jit(model.init)(jax.random.key(1), images, tokens)
  encode = jax.jit(lambda t: model.apply(variables, t, method=model.encode_text))
  base = encode(tokens)
  # Tokens after the end token (padding) cannot influence the causal features at it.
  changed = encode(tokens.at[:, 10].set(7))
  np.testing.assert_allclose(base, changed, atol=1e-6)
  moved = encode(tokens.at[:, 4].set(49407).at[:, 5].set(0))
  assert np.abs(np.asarray(base) - np.asarray(moved)).max() > 1e-3


@pytest.mark.parametrize("causal,scan,remat,attention", [
    (True, False, False, "einsum"), (True, True, True, "einsum"), (False, False, True, "einsum"),
    (False, True, False, "xla"), (True, False, False, "xla")])
def test_the_pooled_last_block_equals_the_whole_stack_at_the_pooled_rows(
    causal, scan, remat, attention):
  # With `rows` the last block runs its attention output, MLP and LayerNorms on the pooled
  # rows alone (keys and values from every position); the causal fused path runs it whole.
  from cloob_jax.models import layers
  stack = layers.Transformer(32, 3, 2, causal=causal, scan=scan, remat=remat,
                             attention=attention)
  x = jax.random.normal(jax.random.key(0), (4, 7, 32))
  mask = jnp.tril(jnp.ones((7, 7), bool)) if causal else None
  rows = jnp.array([6, 2, 0, 4]) if causal else 0  # text: each end token; ViT: class token
  params = stack.init(jax.random.key(1), x, mask, rows=rows)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(
      stack.init(jax.random.key(1), x, mask)["params"])

  def pooled(p):
    return stack.apply({"params": p}, x, mask, rows=rows)

  def whole(p):
    return layers.take_rows(stack.apply({"params": p}, x, mask), rows)[:, 0]

  got, want = jax.jit(pooled)(params), jax.jit(whole)(params)
  assert got.shape == (4, 32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  g1 = jax.jit(jax.grad(lambda p: jnp.sum(pooled(p) ** 2)))(params)
  g2 = jax.jit(jax.grad(lambda p: jnp.sum(whole(p) ** 2)))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fused_attention_implementations_equal_the_einsum_path():
  # jax.nn.dot_product_attention (the 'xla' implementation runs on CPU; 'cudnn' is the same
  # call on NVIDIA GPUs): causal for the text tower through is_causal, never a mask.
  plain = models.create_model("ViT-tiny")
  fused = models.create_model("ViT-tiny", attention="xla")
  images, tokens = _inputs(models.get_config("ViT-tiny"))
  tokens = tokens.at[:, 6:9].set(7)  # tokens after the end of text must not be attended to
  variables = plain.init(jax.random.key(1), images, tokens)
  for got, want in zip(fused.apply(variables, images, tokens)[:2],
                       plain.apply(variables, images, tokens)[:2]):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  with pytest.raises(ValueError, match="unknown model override attention='flash'"):
    models.get_config("ViT-tiny", attention="flash")
  with pytest.raises(ValueError, match="attention='cudnn' needs dtype bfloat16"):
    models.get_config("ViT-tiny", attention="cudnn")
  assert models.get_config("ViT-B/16", attention="cudnn", dtype="bfloat16").attention == "cudnn"
