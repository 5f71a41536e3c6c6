r"""Your own image-caption shards (from `python -m cloob_jax.data.convert`), the paper's recipe.

  python -m cloob_jax.main --config=configs/own_data.py:data_dir=shards/mine,epochs=10 \
      --workdir=runs/mine
  python -m cloob_jax.main --config=configs/own_data.py:data_dir=shards/mine,eval_path=pets/val \
      --workdir=runs/mine --print_config   # the resolved steps, before anything runs

The step count comes from the shards: num_records in data_dir/manifest.json × epochs ÷
batch_size, read when the config loads; a data_dir without a finished conversion is refused in
one line naming the converter (no dataset size is assumed). Warm-up: a tenth of the steps, at
most the CC3M recipe's 10,000. Args: data_dir, model (RN50|RN101|RN50x4|ViT-B/32|ViT-B/16|...),
method (cloob|clip|infoloob|siglip|...), epochs, batch_size, lr, eval_path (a folder of class
sub-folders, CLIP_benchmark tars or tfds:NAME: zero-shot top-1 every eval_every steps),
eval_every, accum_steps (micro-batches per step, as configs/cc3m.py), cache_dir (a local
folder: a gs:// data_dir's shards are copied there), workers, dtype.
"""

import os

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax.data import records


def _paper_config():
  """cc3m.py's paper_config, loaded by path (config files are not a package)."""
  return config_lib.load_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "cc3m.py")).paper_config


def num_records(data_dir: str, cache_dir: str = "") -> int:
  """The records a finished conversion in `data_dir` holds, from its manifest."""
  if not data_dir:
    raise errors.UserError("configs/own_data.py needs :data_dir=DIR, a folder written by "
                           "`python -m cloob_jax.data.convert` (README: Train on your own data)")
  # The same refusals as training's (no folder, no manifest, unfinished, empty), at load time.
  records.check_data_dir(data_dir, cache_dir)
  return int(records.read_manifest(data_dir)["num_records"])


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="RN50", method="cloob", data_dir="", cache_dir="",
                             epochs=10, batch_size=256, accum_steps=1, lr=1e-3, eval_path="",
                             eval_every=0, workers=8, dtype="bfloat16")
  records_in_data = num_records(arg.data_dir, arg.cache_dir)
  steps = max(1, records_in_data * arg.epochs // arg.batch_size)
  config = _paper_config()(arg, dataset_size=records_in_data, lr=arg.lr,
                           warmup_steps=min(10_000, steps // 10), restarts=0)
  config.total_steps = steps  # as paper_config computes it; a field that --print_config shows
  if arg.eval_path:
    every = arg.eval_every or steps  # default: once, at the end
    config.evals.zeroshot = dict(type="zeroshot_classification",
                                 data=dict(path=arg.eval_path), log_steps=every)
  return config
