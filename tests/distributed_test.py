"""cloob_jax.distributed: which environments start jax.distributed, with what arguments."""

import importlib.util

import jax
import pytest

from cloob_jax import distributed


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize's calls instead of starting a cluster."""
  made = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: made.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: made.append(a))
  for var in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  # Not a TPU VM, even where libtpu is installed to compile for TPUs (the Python 3.12 CI leg).
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  return made


def test_one_host_starts_nothing(calls):
  assert not distributed.initialize()
  assert calls == []


def test_explicit_coordinator_uses_gloo_and_passes_the_process(calls):
  assert distributed.initialize("127.0.0.1:1234", 2, 1, num_cpu_devices=2)
  assert calls == [("jax_num_cpu_devices", 2), ("jax_cpu_collectives_implementation", "gloo"),
                   {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                    "process_id": 1, "heartbeat_timeout_seconds": 100},
                   # CPU processes joined by gloo: a cached program hangs on jax 0.12.1
                   ("jax_enable_compilation_cache", False)]


def test_the_heartbeat_timeout_stays_beyond_the_peer_timeout(calls):
  # jax's own abort (screens of C++ log) must come after peerwatch's one line.
  distributed.initialize("127.0.0.1:1234", 2, 0, peer_timeout_s=90)
  started, = [c for c in calls if isinstance(c, dict)]
  assert started["heartbeat_timeout_seconds"] == 130


@pytest.mark.parametrize("var,value", [("SLURM_NTASKS", "4"), ("TPU_WORKER_HOSTNAMES", "a,b")])
def test_slurm_and_gke_tpu_are_detected(calls, monkeypatch, var, value):
  monkeypatch.setenv(var, value)
  assert distributed.initialize()
  assert calls == [{"heartbeat_timeout_seconds": 100}]


def test_cloud_tpu_vm_lets_jax_find_the_slice(calls, monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name == "libtpu" else real(name, *a))
  assert distributed.initialize()  # a TPU VM: no environment variable says it is a pod
  assert calls == [{"heartbeat_timeout_seconds": 100}]

  def no_cluster(**kw):
    raise ValueError("coordinator_address should be defined")
  monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
  assert not distributed.initialize()  # libtpu elsewhere: one process, no error
