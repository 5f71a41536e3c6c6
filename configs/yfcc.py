"""CLOOB on YFCC-15M (the CLIP subset), the paper's setup (docs/method.md).

  python -m cloob_jax.main --config=configs/yfcc.py:model=RN50,data_dir=/data/yfcc15m \
      --workdir=gs://bucket/yfcc_rn50
Args as configs/cc3m.py.
"""

import os

from cloob_jax import config_lib

YFCC_TRAIN_SIZE = 14_829_396


def _paper_config():
  """cc3m.py's paper_config, loaded by path (config files are not a package)."""
  return config_lib.load_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "cc3m.py")).paper_config


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="RN50", method="cloob", data_dir="",
                             cache_dir="", epochs=28,
                             batch_size=1024, accum_steps=1, workers=8, dtype="bfloat16")
  # YFCC runs: lr 5e-4 (the code default), 20k warmup steps, plain cosine.
  return _paper_config()(arg, dataset_size=YFCC_TRAIN_SIZE, lr=5e-4, warmup_steps=20_000,
                         restarts=0)
