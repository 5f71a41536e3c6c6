r"""Zero-shot classification on any folder of class sub-folders.

  python -m cloob_jax.eval --config=configs/eval/folder.py:path=/data/pets/test,model=RN50 \
      --checkpoint=RN50.safetensors

Args: path (DIR/<class>/<images>; class names are the folder names, humanised), name (the
task name, default: the folder's name), classnames (a file with one name per line, in
sorted-folder order, or a built-in list: imagenet, flowers102, gtsrb, ucf101), templates (a
file with one template per line using '{}' or '{c}', or a set name: default, openai_imagenet,
...), n (evaluate an evenly spread subset), model, batch_size, write_predictions.
The same path may also be a CLIP_benchmark webdataset folder or a TFDS name.
"""

import os

from cloob_jax import config_lib
import ml_collections


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, path=None, name=None, classnames=None, templates=None, n=0,
                              model="ViT-B/32", batch_size=256, split=None,
                              write_predictions=False, progress=True)
  config = ml_collections.ConfigDict()
  config.name = "folder"
  config.model = dict(name=arg.model, overrides={})
  config.batch_size = arg.batch_size
  config.progress = arg.progress
  config.write_predictions = arg.write_predictions
  task = arg.name or (os.path.basename(os.path.normpath(arg.path)) if arg.path else "folder")
  data = dict(path=arg.path, hint="no dataset: add :path=DIR to --config")
  for key in ("classnames", "templates", "split"):
    if arg[key] is not None:
      data[key] = arg[key]
  if arg.n:
    data["num_examples"] = arg.n
  config.evals = {task: dict(type="zeroshot_classification", data=data)}
  return config
