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
)

# Files whose module-scoped fixtures train or build something (a run, exports, a server), or
# whose tests share compiled programs in the process (accum_test's full-batch references): one
# worker runs each file whole, so each is made once, not once per worker.
WHOLE_FILES = (
    "tests/accum_test.py",
    "tests/cloob_original_test.py",
    "tests/compile_test.py",
    "tests/eval_multiprocess_test.py",
    "tests/eval_sources_test.py",
    "tests/eval_test.py",
    "tests/export_test.py",
    "tests/faults_test.py",
    "tests/finetune_test.py",
    "tests/gcs_test.py",
    "tests/train_test.py",
)

# The costliest files first (from --durations), so that no long test starts when the other
# worker is about to run out of work; the rest follow in collection order.
FIRST = (
    "tests/export_test.py",
    "tests/train_test.py",
    "tests/bench_test.py",
    "tests/models_test.py",
    "tests/finetune_test.py",
    "tests/faults_test.py",
    "tests/compare_test.py",
    "tests/dead_host_test.py",
    "tests/eval_multiprocess_test.py",
    "tests/gcs_test.py",
    "tests/accum_test.py",
    "tests/sweep_test.py",
    "tests/patch_dropout_test.py",
    "tests/multislice_test.py",
    "tests/chunked_objective_test.py",
)

# The compatibility subset, run by CI on the oldest jax too. On the two legs only jax/jaxlib
# (0.10.x, 0.12.x), flax and numpy resolve differently (optax, orbax, grain, tensorstore, torch,
# open_clip and transformers are the same releases), and most jax entry points the project
# calls changed between them: so one cheap test per jax/flax behaviour the project relies on.
# A node id prefix per entry: a file, a file::test, or one parametrisation of it.
COMPAT = (
    # meshes, shardings, shard_map + all_gather, set_mesh, reshard
    "tests/parallel_test.py",
    "tests/multislice_test.py",  # the hybrid (dcn, data) mesh
    "tests/chunked_objective_test.py::test_chunked_under_the_mesh_matches_the_full_batch_plain_loss[cloob]",
    "tests/objectives_test.py::test_eight_devices_give_the_single_device_value_and_gradients",
    "tests/diagnostics_test.py::test_sharded_statistics_equal_the_full_batch_ones[8-24]",
    # flax towers: scan, jax.checkpoint policies, attention, platform-dependent tracing
    "tests/models_test.py::test_remat_and_scan_give_the_same_values_and_gradients[ViT-tiny-tower0]",
    "tests/models_test.py::test_each_remat_policy_keeps_what_it_says_for_the_backward_pass[ViT-tiny-vision-True]",
    "tests/models_test.py::test_fused_attention_implementations_equal_the_einsum_path",
    "tests/models_test.py::test_scanned_towers_under_fsdp_on_8_devices_equal_one_device",
    "tests/models_test.py::test_defaults_follow_the_platform_compiled_for_not_the_host",
    "tests/patch_dropout_test.py::test_the_train_step_draws_from_the_seed_and_step_only",
    # flax towers against open_clip, and export round trips read by the real consumers
    "tests/open_clip_parity_test.py::test_embeddings_match_open_clip[ViT-tiny]",
    "tests/open_clip_parity_test.py::test_embeddings_match_open_clip[RN-tiny]",
    "tests/export_test.py::test_open_clip_local_dir[ViT-tiny]",
    "tests/export_test.py::test_hf_clip_model[ViT-tiny]",
    "tests/export_test.py::test_params_npz_is_read_back_by_jax",
    # the grain pipeline with jax processes, its state through orbax
    "tests/pipeline_test.py::test_process_sharding",
    "tests/pipeline_test.py::test_state_continuation",
    "tests/pipeline_test.py::test_orbax_checkpoint",
    "tests/pipeline_test.py::test_multiprocess_workers",
    # the train step end to end: the demo through the main binary, resume, processes, FSDP
    "tests/train_test.py::test_demo_run_writes_the_workdir_contract",
    "tests/train_test.py::test_sigterm_saves_and_sigkill_resumes_bitwise",
    "tests/train_test.py::test_one_device_and_two_processes_match_eight_devices",
    "tests/train_test.py::test_restore_variables_on_another_topology",
    "tests/train_test.py::test_fsdp_shards_parameters_and_matches_replicated_training",
    "tests/train_test.py::test_demo_batchnorm_towers_train_the_same_on_1_and_8_devices[ConvNet-tiny]",
    "tests/accum_test.py::test_gradient_equals_the_full_batch_gradient[cloob-8-4-24]",
    "tests/notebook_test.py",  # the demo notebook, top to bottom
)


def matches(nodeid: str, prefixes) -> bool:
  return any(nodeid == p or nodeid.startswith(p + "::") or nodeid.startswith(p + "[")
             for p in prefixes)


def pytest_configure(config):
  config.addinivalue_line("markers", "serial: times or kills processes; one worker runs these")
  config.addinivalue_line("markers", "compat: also run on the oldest supported jax (CI)")
  # pytest-xdist hands out work in the order below (FIRST), not largest group first.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def _file(item) -> str:
  return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: FIRST.index(_file(item)) if _file(item) in FIRST else len(FIRST))
  for item in items:
    if matches(item.nodeid, SERIAL):
      item.add_marker(pytest.mark.serial)
    if item.get_closest_marker("serial"):
      item.add_marker(pytest.mark.xdist_group("serial"))
    elif _file(item) in WHOLE_FILES:
      item.add_marker(pytest.mark.xdist_group(_file(item)))
    if matches(item.nodeid, COMPAT):
      item.add_marker(pytest.mark.compat)
