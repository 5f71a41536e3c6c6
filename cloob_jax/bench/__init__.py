"""Benchmarks: `python -m cloob_jax.bench {data,train} [flags]`."""
