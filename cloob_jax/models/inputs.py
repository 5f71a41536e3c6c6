"""What the towers take: uint8 images normalised on device with CLIP's mean and std.

The input pipeline stays uint8 end to end (a quarter of float32's bytes to move and to put
on device); the train step, the evaluators and fine-tuning call `normalize` inside their
jitted functions, so the conversion runs on the accelerator.
"""

import jax.numpy as jnp

from cloob_jax.data.transforms import CLIP_MEAN, CLIP_STD


def normalize(images):
  """uint8 [..., 3] -> float32 [..., 3] with CLIP's mean/std (run it on device)."""
  mean = jnp.asarray(CLIP_MEAN, jnp.float32) * 255.0
  inv_std = 1.0 / (jnp.asarray(CLIP_STD, jnp.float32) * 255.0)
  return (jnp.asarray(images).astype(jnp.float32) - mean) * inv_std
