"""Suite-wide setup: 8 virtual CPU devices, a compilation cache per worker, and the test groups.

XLA reads the device flag when jax initialises its backend, so it is set before any test
imports jax.

Groups (CONTRIBUTING.md, "Running the tests"):
- `serial`: tests that time processes or kill them; under pytest-xdist with `--dist loadgroup`
  (the README's test command) they all run one after another on one worker.
- `compat`: the compatibility subset that CI also runs on the oldest supported jax
  (`pytest -m compat`). It is named in one place, `COMPAT` below.
"""

import os

import pytest

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test process (subprocesses of the main binary inherit
# it), so identical programs compile once; removed when the session ends. Under pytest-xdist
# the controller makes the folder and each worker takes a subfolder of its own: two processes
# never write one cache entry at once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cloob_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and os.path.basename(os.environ["JAX_COMPILATION_CACHE_DIR"]) != _WORKER:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      os.environ["JAX_COMPILATION_CACHE_DIR"], _WORKER)
  os.makedirs(os.environ["JAX_COMPILATION_CACHE_DIR"], exist_ok=True)

# Tests that time or kill processes: one worker runs them all, one after another.
SERIAL = (
    "tests/dead_host_test.py",
    "tests/distributed_test.py",
)

# The compatibility subset: the tests that touch the jax / flax / optax / orbax / grain APIs
# whose behaviour moves across the supported range (requirements.txt), so CI runs them on the
# oldest jax too. A node id prefix per entry: a file, or a file::test.
COMPAT = (
)


def matches(nodeid: str, prefixes) -> bool:
  return any(nodeid == p or nodeid.startswith(p + "::") or nodeid.startswith(p + "[")
             for p in prefixes)


def pytest_configure(config):
  config.addinivalue_line("markers", "serial: times or kills processes; one worker runs these")
  config.addinivalue_line("markers", "compat: also run on the oldest supported jax (CI)")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if matches(item.nodeid, SERIAL):
      item.add_marker(pytest.mark.serial)
    if item.get_closest_marker("serial"):
      item.add_marker(pytest.mark.xdist_group("serial"))
    if matches(item.nodeid, COMPAT):
      item.add_marker(pytest.mark.compat)
