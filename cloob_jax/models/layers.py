"""Building blocks shared by the towers: float32 norms, attention, pre-LN transformer, conv-BN.

Every module computes in `dtype` (float32 or bfloat16) and keeps its parameters in float32;
LayerNorm, BatchNorm and softmax always run in float32 and cast back (the usual
mixed-precision recipe).
"""

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cloob_jax import errors
from cloob_jax.models import towers

Dtype = Any

# The torch names `Transformer` adds to a tower's key map: `resblocks_3` is torch's ModuleList
# entry `resblocks.3`, and the fused qkv projection `attn/in_proj` is nn.MultiheadAttention's
# `attn.in_proj_weight` / `attn.in_proj_bias`.
TRANSFORMER_TORCH_NAMES = towers.TorchNames(lists=("resblocks",), fused=("in_proj",))


def quick_gelu(x):
  """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x):
  """PyTorch's nn.GELU default (erf form), which open_clip uses unless quick_gelu is set."""
  return nn.gelu(x, approximate=False)


def activation(quick: bool) -> Callable:
  return quick_gelu if quick else exact_gelu


class LayerNorm(nn.Module):
  """LayerNorm over the last axis computed in float32 (eps 1e-5 as in PyTorch), cast to `dtype`."""
  dtype: Dtype = jnp.float32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (width,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (width,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


def dense(features, dtype, name, std=None, use_bias=True):
  init = nn.initializers.normal(std) if std is not None else nn.initializers.lecun_normal()
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=init, name=name)


class MultiHeadAttention(nn.Module):
  """Self-attention with a fused qkv projection laid out like torch's nn.MultiheadAttention."""
  width: int
  heads: int
  dtype: Dtype = jnp.float32
  in_std: float | None = None
  out_std: float | None = None
  attention: str = "einsum"  # `attention`'s implementation
  causal: bool = False       # the mask is causal (what jax.nn.dot_product_attention is told)

  @nn.compact
  def __call__(self, x, mask=None, rows=None):
    """x: [batch, length, width]; mask: bool [length, length] (True = attend) or None.

    rows (see `take_rows`): only those queries, [batch, 1, width] out; the keys and values
    are still every position's. With a mask, only for the einsum implementation.
    """
    b, l, w = x.shape
    head_dim = w // self.heads
    qkv = dense(3 * w, self.dtype, "in_proj", self.in_std)(x)
    q, k, v = jnp.split(qkv.reshape(b, l, 3, self.heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [b, l, heads, head_dim]
    if rows is not None:
      q = take_rows(q, rows)
      if mask is not None:  # the rows' own lines of the mask, broadcast over the heads
        if self.attention != "einsum":  # the fused calls take is_causal, not a mask
          raise ValueError(f"attention={self.attention!r} cannot run masked rows alone")
        mask = mask[rows].reshape(-1, 1, 1, l)
    out = attention(q, k, v, mask, self.dtype, implementation=self.attention,
                    causal=self.causal).reshape(b, q.shape[1], w)
    return dense(w, self.dtype, "out_proj", self.out_std)(out)


def take_rows(x, rows):
  """x [batch, length, ...] at one position per example -> [batch, 1, ...]: `rows` an int
  (the same position for every example, e.g. ViT's class token) or int32 [batch] (e.g. the
  text tower's end-of-text token)."""
  if isinstance(rows, int):
    return x[:, rows:rows + 1]
  if jnp.ndim(rows) == 0:  # an int traced by a lifted transform (nn.remat)
    return jax.lax.dynamic_slice_in_dim(x, rows, 1, axis=1)
  return jnp.take_along_axis(x, rows.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)


ATTENTION = ("einsum", "xla", "cudnn")


def attention(q, k, v, mask=None, dtype=jnp.float32, implementation="einsum", causal=False):
  """softmax(q k^T / sqrt(d)) v per head: q [b, lq, h, d], k and v [b, lk, h, d], mask bool
  [lq, lk] or [b, 1, lq, lk] (True = attend) or None -> [b, lq, h, d] in `dtype`.

  implementation: 'einsum' (logits in float32, the towers' default, equal to open_clip's),
  or jax.nn.dot_product_attention's 'xla' / 'cudnn' (fused flash attention on NVIDIA GPUs;
  bfloat16 or float16). Those are told `is_causal=causal` and never given `mask`.
  """
  if implementation != "einsum":
    out = jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                       implementation=implementation)
    return out.astype(dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * q.shape[-1]**-0.5, k,
                      preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MLP(nn.Module):
  """c_fc -> GELU (exact or quick) -> c_proj back to the input width."""
  hidden: int
  quick_gelu: bool = False
  dtype: Dtype = jnp.float32
  fc_std: float | None = None
  proj_std: float | None = None

  @nn.compact
  def __call__(self, x):
    y = dense(self.hidden, self.dtype, "c_fc", self.fc_std)(x)
    y = activation(self.quick_gelu)(y)
    return dense(x.shape[-1], self.dtype, "c_proj", self.proj_std)(y)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x)) with a GELU MLP of ratio `mlp_ratio`."""
  width: int
  heads: int
  layers: int  # depth of the stack, for the init scale of the residual projections
  mlp_ratio: float = 4.0
  quick_gelu: bool = False
  dtype: Dtype = jnp.float32
  attention: str = "einsum"
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask=None, rows=None):
    """x [b, l, width] -> [b, l, width], or with `rows` (`take_rows`) only those rows'
    outputs, [b, 1, width]: attention reads every position, the rest runs on the rows."""
    attn_std = self.width**-0.5
    proj_std = attn_std * (2 * self.layers)**-0.5
    fc_std = (2 * self.width)**-0.5
    y = LayerNorm(self.dtype, name="ln_1")(x)
    attn = MultiHeadAttention(self.width, self.heads, self.dtype, attn_std, proj_std,
                              self.attention, self.causal, name="attn")(y, mask, rows)
    x = (x if rows is None else take_rows(x, rows)) + attn
    y = LayerNorm(self.dtype, name="ln_2")(x)
    y = MLP(int(self.width * self.mlp_ratio), self.quick_gelu, self.dtype, fc_std, proj_std,
            name="mlp")(y)
    return x + y


# Transformer.scan's default: scanned on XLA:CPU from this width on. Measured with
# `python -m cloob_jax.bench train --scan=on|off` on a 2-core CPU: ViT-B/32 (widths 768 and
# 512) at batch 32 takes 0.76x the unrolled step's time; the demo's step (a width-64 text
# tower) 1.3x.
SCAN_MIN_WIDTH = 512

# The platform ('cpu', 'gpu', 'tpu') the blocks are traced for, set by `compiling_for` around a
# step built on a mesh; None: jax.default_backend(). A process can compile for devices it does
# not have (bench compile: a TPU slice from this CPU), where the default backend is the host's.
_PLATFORM = contextvars.ContextVar("cloob_jax_target_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str | None) -> Iterator[None]:
  """Within this context the platform-dependent defaults (`scans`, `effective_remat`) are
  those of `platform` (parallel.platform(mesh)); None keeps jax.default_backend()'s."""
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def for_platform(fn: Callable, platform: str | None) -> Callable:
  """`fn` traced under `compiling_for(platform)`: what jax.jit is given for a step on a mesh
  of `platform`'s devices (tracing runs the Python function, whenever and wherever it runs)."""

  def traced(*args, **kwargs):
    with compiling_for(platform):
      return fn(*args, **kwargs)

  # jit names the program after the function (HLO module, profiles): keep `fn`'s name.
  name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None)
  traced.__name__ = traced.__qualname__ = name or "traced"
  return traced


def target_platform() -> str:
  """The platform the defaults are chosen for: `compiling_for`'s, else the default backend."""
  return _PLATFORM.get() or jax.default_backend()


def scans(scan: bool | None, width: int, platform: str | None = None) -> bool:
  """Whether a Transformer of `width` runs as a scan: `scan`, or for None the default of
  `platform` (default `target_platform()`): scanned on CPU from SCAN_MIN_WIDTH on."""
  if scan is None:
    return (platform or target_platform()) == "cpu" and width >= SCAN_MIN_WIDTH
  return scan


def _weight_ops_saveable(prim, *args, **params) -> bool:
  """jax.checkpoint policy: keep the outputs of convolutions and of matmuls with a weight
  (dots without batch dimensions), recompute everything else."""
  return (prim is jax.lax.conv_general_dilated_p
          or jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params))


# A tower's `remat`: what its blocks keep for the backward pass. "full" (or True) keeps only
# each block's input and recomputes the rest; "dots" also keeps the outputs of the matmuls
# and convolutions with a weight, recomputing norms, activations and attention scores.
# None (the transformers' default) is "dots" for blocks that run as a scan on XLA:CPU and no
# remat elsewhere: there the scan's stacked buffers of every intermediate cost more than the
# recomputation (on a 2-core CPU ViT-B/32 at batch 32 took 0.91-0.92x the step without remat:
# `python -m cloob_jax.bench levers --levers=remat_off` compares the two).
REMAT_POLICIES = {"full": None, "dots": _weight_ops_saveable}


def effective_remat(remat: bool | str | None, scanned: bool = False,
                    platform: str | None = None) -> bool | str:
  """A tower's `remat` as it runs: False, "full" or a REMAT_POLICIES name. True/1 is "full",
  0 and "off" are False, None is "dots" for `scanned` blocks on CPU (`platform`, default
  `target_platform()`), else False; anything else is refused in one line."""
  if remat is None:
    return "dots" if scanned and (platform or target_platform()) == "cpu" else False
  if not isinstance(remat, str) and remat in (0, 1):
    return "full" if remat else False
  if remat == "off":
    return False
  if not isinstance(remat, str) or remat not in REMAT_POLICIES:
    raise errors.UserError(f"remat={remat!r}: expected None, False, True, 'off' or one of "
                           f"{', '.join(map(repr, REMAT_POLICIES))}")
  return remat


def remat_policy(remat: bool | str | None,
                 scanned: bool = False) -> tuple[bool, Callable | None]:
  """-> (rematerialise, the jax.checkpoint policy) for a tower's `remat` (`effective_remat`)."""
  name = effective_remat(remat, scanned)
  return (False, None) if name is False else (True, REMAT_POLICIES[name])


class Transformer(nn.Module):
  """A stack of `layers` residual attention blocks, optionally rematerialised (grad checkpointing;
  `remat`: None, False, True / "full" or "dots", see `effective_remat`).

  scan: run the blocks as one `lax.scan` over their stacked parameters instead of unrolled
  (one block compiled instead of `layers`); None: `scans`'s default. The parameters keep the
  unrolled layout (`resblocks_0` ... `resblocks_{layers-1}`), so checkpoints, key maps and
  exports are the same either way; only `init` always runs unrolled.

  `__call__(x, mask, rows)`: with `rows` (`take_rows`: the pooled token of each example) it
  returns only those rows of the output, [batch, width], and the last block computes its
  attention output, MLP and LayerNorm for them alone (its keys and values still come from
  every position). Nothing else reads the other positions of the last block, so the result
  is the full stack's at those rows, within float rounding. A causal mask with a fused
  attention implementation (which takes `is_causal`, never a mask) runs the whole last block.
  """
  width: int
  layers: int
  heads: int
  mlp_ratio: float = 4.0
  quick_gelu: bool = False
  remat: bool | str | None = None
  dtype: Dtype = jnp.float32
  attention: str = "einsum"  # layers.attention's implementation
  causal: bool = False       # `mask` is causal (the text tower)
  scan: bool | None = None

  def _block_args(self):
    return (self.width, self.heads, self.layers, self.mlp_ratio, self.quick_gelu, self.dtype,
            self.attention, self.causal)

  @nn.compact
  def __call__(self, x, mask=None, rows=None):
    pool_last = rows is not None and (self.attention == "einsum" or not self.causal)
    if scans(self.scan, self.width) and not self.is_initializing():
      x = self._scanned(x, mask, rows if pool_last else None)
    else:
      remat, policy = remat_policy(self.remat)
      block = nn.remat(ResidualAttentionBlock, policy=policy) if remat else ResidualAttentionBlock
      for i in range(self.layers):
        last = pool_last and i == self.layers - 1
        x = block(*self._block_args(), name=f"resblocks_{i}")(x, mask, rows if last else None)
    if rows is None:
      return x
    return (x if pool_last else take_rows(x, rows))[:, 0]

  def _scanned(self, x, mask, last_rows):
    """The blocks as a scan; with `last_rows`, the last block outside it, on those rows."""
    params = self.variables["params"]
    block = ResidualAttentionBlock(*self._block_args(), parent=None)

    def body(y, block_params):
      return block.apply({"params": block_params}, y, mask), None

    def last(y, block_params):
      return block.apply({"params": block_params}, y, mask, last_rows)

    remat, policy = remat_policy(self.remat, scanned=True)
    if remat:
      body, last = jax.checkpoint(body, policy=policy), jax.checkpoint(last, policy=policy)
    scanned = self.layers - (last_rows is not None)
    if scanned:
      stacked = jax.tree.map(lambda *p: jnp.stack(p),
                             *(params[f"resblocks_{i}"] for i in range(scanned)))
      x = jax.lax.scan(body, x, stacked)[0]
    if last_rows is not None:
      x = last(x, params[f"resblocks_{self.layers - 1}"])
    return x


def batch_norm(x, train, dtype, name, zero_init=False):
  """BatchNorm in float32 with PyTorch's defaults (eps 1e-5, momentum 0.1), cast to `dtype`.

  Under jit on a batch-sharded global array the mean/var reduce over the global batch.
  """
  bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                    dtype=jnp.float32, param_dtype=jnp.float32,
                    scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                    name=name)
  return bn(x.astype(jnp.float32)).astype(dtype)


def conv_bn_relu_layers(x, layers: Sequence[tuple[int, int]], train, dtype):
  """A 3x3 conv (no bias) -> BatchNorm -> ReLU per (features, stride) of `layers`, named
  conv1/bn1, conv2/bn2, ... in the calling module (CLIP's stem; the ConvNet's stages)."""
  for i, (features, stride) in enumerate(layers, start=1):
    x = nn.Conv(features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False,
                dtype=dtype, param_dtype=jnp.float32,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                name=f"conv{i}")(x)
    x = jax.nn.relu(batch_norm(x, train, dtype, f"bn{i}"))
  return x


def check_image_size(images, image_size: int) -> None:
  """Refuses images [batch, H, W, 3] that are not image_size x image_size, naming both."""
  if images.shape[1:3] != (image_size, image_size):
    raise ValueError(f"expected images of {image_size}x{image_size}, "
                     f"got {images.shape[1]}x{images.shape[2]}")


def l2_normalize(x, eps=1e-12):
  """Rows to unit L2 norm, in float32 (F.normalize semantics: divide by max(norm, eps))."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)
