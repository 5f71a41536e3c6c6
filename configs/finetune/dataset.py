"""Fine-tune on a labelled dataset of the eval sources: a class folder, CLIP_benchmark tars, TFDS.

  python -m cloob_jax.finetune \
      --config=configs/finetune/dataset.py:workdir=runs/cc3m,path=/data/eurosat,mode=linear_probe \
      --workdir=runs/ft_eurosat
  ...:checkpoint=RN50.safetensors,model=RN50,path=tfds:cifar10,split=train,val_split=test
  ...:path=/data/wds_cars,split=train,val_split=test        # CLIP_benchmark webdataset tars

`path` is read by `cloob_jax.evaluators.sources` (layout detected, or `source=`); `split`
names the training split. With `val_split` the validation set is that split of the same
dataset; without it, `val_fraction` of the training split is held out by a seeded permutation
(`split_seed`). `classnames` / `templates`: a list file or a built-in name, as for the eval
binary (default: the dataset's own, else this project's default templates). Every other arg
is configs/finetune/synthetic.py's.
"""

import importlib.util
import os

from cloob_jax import config_lib


def _synthetic():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.py")
  spec = importlib.util.spec_from_file_location("_finetune_synthetic_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  base = _synthetic()
  arg = config_lib.parse_arg(arg, workdir="", step=-1, checkpoint="", model="", path="",
                             source="", split="train", val_split="", val_fraction=0.2,
                             classnames="", templates="", mode="end_to_end", method="cloob",
                             steps=1000, lr=-1.0, batch_size=128, seed=0, split_seed=0)
  common = ",".join(f"{k}={arg[k]}" for k in ("workdir", "step", "checkpoint", "model", "mode",
                                               "method", "steps", "lr", "batch_size", "seed",
                                               "split_seed"))
  config = base.get_config(common)
  if not arg.path:
    raise ValueError("configs/finetune/dataset.py needs path=DATASET (a class folder, "
                     "CLIP_benchmark tars or tfds:NAME)")
  train = dict(path=arg.path, split=arg.split)
  if arg.source:
    train["source"] = arg.source
  for key in ("classnames", "templates"):
    if arg[key]:
      train[key] = arg[key]
  config.data.train = train
  config.data.val = dict(train, split=arg.val_split) if arg.val_split else {}
  config.data.val_fraction = arg.val_fraction
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 500
  return config
