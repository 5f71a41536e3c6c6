"""cloob_jax: CLOOB and CLIP contrastive image-text pre-training in JAX/Flax."""

__version__ = "0.1.0"
