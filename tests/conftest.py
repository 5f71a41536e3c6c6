"""Suite-wide setup: 8 virtual CPU devices, so multi-device tests run without an accelerator.

XLA reads the flag when jax initialises its backend, so it is set before any test imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
