"""Your own data, end to end: a CSV of images and captions converted to shards, then trained
with configs/own_data.py, whose step count follows the shards' manifest, with a zero-shot
eval from a class folder during training (ViT-tiny, a few steps)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax.data import convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _image(path, colour, rng):
  pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 48, 3)), 0, 255)
  Image.fromarray(pixels.astype(np.uint8)).save(path)


def _dataset(root):
  """images/ and captions.tsv (19 rows, one naming a missing image) and a class folder."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "images"))
  rows = ["filepath\ttitle"]
  for i in range(18):
    name = list(COLOURS)[i % 3]
    _image(os.path.join(root, "images", f"{i:03d}.png"), COLOURS[name], rng)
    rows.append(f"{i:03d}.png\ta {name} picture, number {i}")
  rows.append("missing.png\ta picture that is not there")
  with open(os.path.join(root, "captions.tsv"), "w") as f:
    f.write("\n".join(rows) + "\n")
  for name in ("red", "blue"):
    os.makedirs(os.path.join(root, "classes", name))
    for i in range(2):
      _image(os.path.join(root, "classes", name, f"{i}.png"), COLOURS[name], rng)


def test_csv_to_shards_to_training_with_steps_from_the_manifest(tmp_path):
  _dataset(str(tmp_path))
  shards = str(tmp_path / "shards")
  manifest = convert.convert_csv(str(tmp_path / "captions.tsv"), shards,
                                 image_root=str(tmp_path / "images"), rows_per_shard=8,
                                 workers=1, progress=False)
  assert manifest["complete"] and manifest["num_records"] == 18
  assert manifest["skipped"] == {"missing": 1} and len(manifest["shards"]) == 3

  args = f"data_dir={shards},model=ViT-tiny,epochs=2,batch_size=4,dtype=float32,workers=0"
  spec = f"configs/own_data.py:{args},eval_path={tmp_path / 'classes'}"
  config = config_lib.load_config_file(os.path.join(REPO, spec))
  assert config.total_steps == 18 * 2 // 4 == 9  # records x epochs / batch
  assert config.optimizer.warmup_steps == 0 and config.data.data_dir == shards
  assert config.evals.zeroshot.log_steps == 9

  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-m", "cloob_jax.main", f"--config={spec}", f"--workdir={workdir}",
       "--config.log_every=1", "--config.checkpoint_every=9"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert json.loads((workdir / "config.json").read_text())["total_steps"] == 9
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == list(range(1, 10))
  assert any(k.startswith("zeroshot") for r in rows for k in r), rows[-1]


def test_own_data_config_refuses_to_guess_a_size(tmp_path):
  for spec, words in [("configs/own_data.py", "needs :data_dir=DIR"),
                      (f"configs/own_data.py:data_dir={tmp_path}", "has no manifest.json")]:
    with pytest.raises(errors.UserError, match=words):
      config_lib.load_config_file(os.path.join(REPO, spec))
