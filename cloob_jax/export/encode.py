"""The bytes of the files the formats write: safetensors with our metadata, JSON, and the
record of the eval preprocessing."""

from __future__ import annotations

import json
from typing import Any


def safetensors_bytes(tensors: dict, info: dict) -> bytes:
  """A torch-style state dict as safetensors (float32), `info` under the "cloob_jax" key."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  tensors = {k: np.asarray(v, np.float32, order="C") for k, v in tensors.items()}
  # "format": "pt" is what transformers and open_clip expect of a torch state dict.
  return safetensors_numpy.save(tensors, metadata={"format": "pt",
                                                   "cloob_jax": json.dumps(info)})


def json_bytes(obj) -> bytes:
  return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


def preprocess_cfg(config) -> dict[str, Any]:
  """The eval transform (`data.transforms`): bicubic short-side resize, centre crop, CLIP's
  mean/std."""
  from cloob_jax.data import transforms  # pylint: disable=g-import-not-at-top
  return {"size": config.vision.image_size, "mode": "RGB", "mean": list(transforms.CLIP_MEAN),
          "std": list(transforms.CLIP_STD), "interpolation": "bicubic",
          "resize_mode": "shortest"}
