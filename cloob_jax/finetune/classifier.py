"""The zero-shot-initialised image classifier, WiSE-FT's recipe, and weight interpolation.

    logits = normalise(image_tower(x)) @ head['kernel'] + head['bias']

with, at initialisation, kernel = exp(logit_scale) * Wᵀ (W: the prompt-ensemble class
embeddings [C, d], unit rows; `evaluators.zeroshot.class_embeddings`) and bias = 0. Then the
arg-max of the logits is the arg-max of the cosines, which is the zero-shot prediction: at
step 0 the classifier is the zero-shot classifier.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cloob_jax import paths
from cloob_jax.evaluators import zeroshot

HEAD_WEIGHT = "weight"  # torch.nn.Linear's names and layout ([C, d], [C]) in head.safetensors
HEAD_BIAS = "bias"


def zeroshot_head(embedder, variables, classnames: Sequence[str],
                  templates: Sequence[str]) -> dict[str, np.ndarray]:
  """{'kernel': float32 [d, C] = exp(logit_scale) Wᵀ, 'bias': zeros [C]} for the model
  `variables` (linen: {'params': ..., 'batch_stats': ...})."""
  weights = zeroshot.class_embeddings(embedder, variables, classnames, templates)
  scale = np.exp(np.asarray(jax.device_get(variables["params"]["logit_scale"]), np.float32))
  kernel = (scale * weights.T).astype(np.float32)
  return {"kernel": kernel, "bias": np.zeros((weights.shape[0],), np.float32)}


def logits(image_embeddings, head: Mapping[str, Any]):
  """[n, d] unit rows (the image tower's `encode_image`) -> [n, C]; numpy or jax."""
  return image_embeddings @ head["kernel"] + head["bias"]


def interpolate(zeroshot_tree, finetuned_tree, alpha: float):
  """θ_α = (1 - α) θ_zs + α θ_ft, leaf by leaf (numpy, in each leaf's float dtype).

  For finite weights the formula gives the endpoints at α = 0 and 1 already (1·x + 0·y = x);
  those two are returned as copies of the endpoints so that even a -0.0 keeps its sign.
  Integer leaves (none in these towers) are taken from θ_ft.
  """
  if alpha in (0, 1):
    return jax.tree.map(lambda x: np.array(x, copy=True),
                        zeroshot_tree if alpha == 0 else finetuned_tree)
  a = np.float32(alpha)
  one = np.float32(1)

  def mix(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape:
      raise ValueError(f"cannot interpolate shapes {x.shape} and {y.shape}")
    if not np.issubdtype(x.dtype, np.floating):
      return y
    return ((one - a) * x + a * y).astype(x.dtype)

  return jax.tree.map(mix, zeroshot_tree, finetuned_tree)


def head_bytes(head: Mapping[str, Any], info: Mapping[str, Any]) -> bytes:
  """The head as safetensors in torch.nn.Linear's layout (weight [C, d], bias [C])."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  tensors = {HEAD_WEIGHT: np.ascontiguousarray(np.asarray(head["kernel"], np.float32).T),
             HEAD_BIAS: np.ascontiguousarray(np.asarray(head["bias"], np.float32))}
  return safetensors_numpy.save(tensors, metadata={"format": "pt",
                                                   "cloob_jax": json.dumps(dict(info))})


def write_head(path: str, head: Mapping[str, Any], info: Mapping[str, Any]) -> None:
  paths.write_bytes(path, head_bytes(head, info))


def read_head(path: str) -> dict[str, np.ndarray]:
  """head.safetensors -> {'kernel': [d, C], 'bias': [C]} (the linen layout)."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  tensors = safetensors_numpy.load(paths.read_bytes(path))
  return {"kernel": tensors[HEAD_WEIGHT].T.copy(), "bias": tensors[HEAD_BIAS]}
