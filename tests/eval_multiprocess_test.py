"""Pod-scale evaluation: the eval binary on 2 processes x 2 CPU devices equals it on one process.

Each process reads and embeds only its share of every image set (`Embedder.share`), and every
process makes the same number of device calls; counts are summed and small per-example results
(embeddings, predictions) gathered across processes (gloo collectives, coordinator on
127.0.0.1). A second test runs the trainer's in-training evals on 2 processes.

Run as a script, this file is one eval process: `cloob_jax.eval`'s own `main` and flags, with
counters around the image reads and device calls, written to --counters at the end.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Odd set sizes and a global batch of 8 (2 rows per device): several device calls per set, a
# last batch that is partly padding, and shares of unequal size (11 and 10 of 21).
EVAL_CONFIG = ("configs/eval/synthetic.py:model=ViT-tiny,n=21,retrieval_n=13,probe_n=30,"
               "batch_size=8,progress=False")
FOLDER_CLASSES = ("circle", "square", "triangle")
FOLDER_IMAGES = 5  # per class: 15 images, shares of 8 and 7


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int | None = None):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the device count comes from --num_cpu_devices
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _processes(argvs, timeout=300):
  """Runs one process per argv (all at once); -> their outputs, each having exited 0."""
  procs = [subprocess.Popen([sys.executable, *argv], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for argv in argvs]
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  return outs


def _distributed(num, port, devices):
  return [[f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num}",
           f"--process_id={i}", f"--num_cpu_devices={devices}"] for i in range(num)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A randomly initialised ViT-tiny written as an open_clip state dict (.safetensors): the same
  file on every topology (an orbax workdir restores only onto the topology it was saved on)."""
  import flax
  import jax
  from safetensors import numpy as safetensors_numpy

  from cloob_jax import models
  from cloob_jax.interop import open_clip
  module = models.create_model("ViT-tiny")
  variables = jax.jit(module.init)(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32),
                                   np.zeros((1, 77), np.int32))
  state = {}
  for collection, tree in flax.core.unfreeze(variables).items():
    for path, value in flax.traverse_util.flatten_dict(tree).items():
      value = np.asarray(value, np.float32)
      if path[-1] == "kernel":  # the inverse of open_clip._to_flax
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      state[open_clip._torch_key(path, collection)] = np.ascontiguousarray(value)
  path = str(tmp_path_factory.mktemp("ckpt") / "vit_tiny.safetensors")
  safetensors_numpy.save_file(state, path)
  _, loaded = open_clip.load(path, "ViT-tiny")
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, variables), loaded)
  return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A class-folder dataset (read image by image: the path of real datasets) of plain colours."""
  from PIL import Image
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  for name in FOLDER_CLASSES:
    (root / name).mkdir()
    for i in range(FOLDER_IMAGES):
      colour = rng.integers(0, 256, 3, dtype=np.uint8)
      Image.fromarray(np.broadcast_to(colour, (40, 36, 3)).copy()).save(root / name / f"{i}.png")
  return str(root)


def _eval(checkpoint, folder, out_dir, distributed):
  """Runs this file as the eval binary, one process per entry of `distributed` (a list of flag
  lists); -> (results JSON, [counters of each process])."""
  output = os.path.join(out_dir, "results.json")
  argvs = [[__file__, f"--config={EVAL_CONFIG}", f"--checkpoint={checkpoint}",
            f"--output={output}", f"--folder={folder}",
            f"--counters={os.path.join(out_dir, f'counters{i}.json')}", *flags]
           for i, flags in enumerate(distributed)]
  _processes(argvs)
  with open(output) as f:
    results = json.load(f)
  counters = []
  for i in range(len(argvs)):
    with open(os.path.join(out_dir, f"counters{i}.json")) as f:
      counters.append(json.load(f))
  return results, counters


def test_two_processes_with_two_devices_each_equal_one_process(checkpoint, folder, tmp_path):
  one_dir, two_dir = tmp_path / "one", tmp_path / "two"
  one_dir.mkdir()
  two_dir.mkdir()
  one, (counted,) = _eval(checkpoint, folder, str(one_dir), [["--num_cpu_devices=4"]])
  two, counters = _eval(checkpoint, folder, str(two_dir), _distributed(2, _free_port(), 2))

  tasks = ["colour", "shape", "size", "position", "count", "heldout_combination", "retrieval",
           "embedding_analysis", "attribute_probe", "shape_probe", "folder"]
  assert list(one) == tasks and list(two) == tasks
  # Exactly equal, every metric: both runs give each of their 4 devices 2 rows per call, so
  # every embedding is bitwise the same, and so are the counts, ranks, analyses and the probe.
  # (On 1 or 2 x 1 devices the float analyses move by <= 1e-5 absolute; the rest stays equal.)
  for task in tasks:
    assert two[task] == one[task], (task, one[task], two[task])

  # Each process read its share of the folder's images, once each, and passed only its share
  # of every in-memory set; both made the same number of device calls.
  n_folder = len(FOLDER_CLASSES) * FOLDER_IMAGES
  assert sorted(counted["folder_reads"]) == list(range(n_folder))
  reads = [sorted(c["folder_reads"]) for c in counters]
  assert reads == [list(range(0, n_folder, 2)), list(range(1, n_folder, 2))]
  # tasks, retrieval, analysis, attribute probe (one-object and 1-3-object scenes), shape probe
  # train/test, folder
  sizes = [21] * 6 + [13, 13, 30, 30, 30, 21, 15]
  assert counted["share_rows"] == sizes
  assert [c["share_rows"] for c in counters] == [[_ceil_div(n, 2) for n in sizes],
                                                 [n // 2 for n in sizes]]
  # ceil(ceil(n / 2) / 4) calls per set: 4 of the global batch's 8 rows are each process's.
  expected_calls = [_ceil_div(_ceil_div(n, 2), 4) for n in sizes]
  assert [c["local_device_calls"] for c in counters] == [expected_calls, expected_calls]


def test_in_training_evals_on_two_processes(tmp_path):
  """The trainer's evals (the same Embedder and evaluators, a mesh over both processes) run at
  the last step of a 2-process run, and process 0 logs and prints them."""
  workdir = str(tmp_path / "trained")
  flags = ["-m", "cloob_jax.main", "--config=configs/demo.py:tiny=True,steps=2,batch_size=8",
           f"--workdir={workdir}", "--config.log_every=1"]
  outs = _processes([flags + d for d in _distributed(2, _free_port(), 1)])
  assert "## Evaluation at step 2" in outs[0] and "## Evaluation" not in outs[1]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = {k: v for r in rows if r["step"] == 2 for k, v in r.items() if "/" in k}
  for key in ("colour/top1", "count/mean_per_class_recall", "retrieval/text_to_image_recall@5",
              "embedding_analysis/alignment"):
    assert key in evals and np.isfinite(evals[key]), sorted(evals)


# ----------------------------------------------------------------------------
# One eval process (run as a script by the first test).


def _worker():
  from absl import app
  from absl import flags

  from cloob_jax import eval as eval_lib
  from cloob_jax.evaluators import common
  from cloob_jax.evaluators import sources

  eval_lib.define_flags()
  flags.DEFINE_string("folder", None, "A class-folder dataset to add as the eval 'folder'.")
  flags.DEFINE_string("counters", None, "JSON file for this process's counters.")
  counters = {"folder_reads": [], "share_rows": [], "local_device_calls": []}

  get = sources.FolderClassification.get

  def counted_get(self, index):
    counters["folder_reads"].append(int(index))
    return get(self, index)

  share = common.Embedder.embed_image_share

  def counted_share(self, variables, batches, n, desc=None):
    rows = []

    def counted():
      for batch in batches:
        rows.append(len(batch))
        yield batch

    calls_before = self.local_calls
    emb = share(self, variables, counted(), n, desc)
    counters["share_rows"].append(sum(rows))
    counters["local_device_calls"].append(self.local_calls - calls_before)
    return emb

  put_local = common.Embedder._put_local

  def counted_put_local(self, rows):
    self.local_calls += 1
    return put_local(self, rows)

  sources.FolderClassification.get = counted_get
  common.Embedder.embed_image_share = counted_share
  common.Embedder._put_local = counted_put_local
  common.Embedder.local_calls = 0

  def main(argv):
    config = flags.FLAGS.config
    with config.unlocked():
      config.evals.folder = dict(type="zeroshot_classification",
                                 data=dict(source="folder", path=flags.FLAGS.folder))
    try:
      eval_lib.main(argv)
    finally:
      with open(flags.FLAGS.counters, "w") as f:
        json.dump(counters, f)

  app.run(main)


if __name__ == "__main__":
  _worker()
