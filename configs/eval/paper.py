r"""The zero-shot benchmarks of the CLOOB paper (top-1 %, CLIP's prompt-ensemble protocol).

  python -m cloob_jax.eval --config=configs/eval/paper.py:model=RN50,\
imagenet=tfds:imagenet2012,imagenet_v2=/data/imagenetv2-matched-frequency,\
flowers102=/data/wds_vtab-flowers,tfds_data_dir=/data/tfds --checkpoint=RN50.safetensors

Each dataset is located by its own arg, `KEY=PATH` or `KEY=tfds:NAME` (a bare name that is not
an existing path is taken as a TFDS name too); datasets not given are skipped with a message.
A PATH may be a folder of class sub-folders, a CLIP_benchmark webdataset folder (tar shards
with classnames.txt and zeroshot_classification_templates.txt), or (for TFDS) a prepared
ArrayRecord dataset under tfds_data_dir. Keys and what they expect:

  imagenet      ImageNet-1k validation (TFDS imagenet2012 'validation', or a folder)
  imagenet_v2   ImageNet V2 matched-frequency (TFDS imagenet_v2, or folders 0..999)
  birdsnap      Birdsnap test (500 species)
  country211    Country211 test (folders named by ISO country code)
  flowers102    Oxford Flowers 102 test (TFDS oxford_flowers102)
  gtsrb         GTSRB test (folders 00000..00042, or CLIP_benchmark wds_gtsrb)
  ucf101        UCF101 middle frames, one image per video, in class folders
  cars          Stanford Cars test (TFDS cars196)

Class names come from `KEY_classnames=FILE` when given, else from the dataset when it has
readable ones (country codes become names), else from this project's lists (GTSRB, Flowers102,
UCF101) or, for ImageNet, from open-clip-torch's metadata. Templates: `KEY_templates=FILE`, else
the dataset's (CLIP_benchmark), else OpenAI's 80 for ImageNet (as in the paper; needs
open-clip-torch) and this project's per-dataset sets for the rest.
Other args: model (architecture for --checkpoint), batch_size, n (evenly spread subset per
dataset, for a quick look; 0 = all), tfds_data_dir, write_predictions.
"""

from cloob_jax import config_lib
import ml_collections

# key: (TFDS split, built-in class names, default templates)
_DATASETS = {
    "imagenet": ("validation", "imagenet", "openai_imagenet"),
    "imagenet_v2": ("test", "imagenet", "openai_imagenet"),
    "birdsnap": ("test", None, "birdsnap"),
    "country211": ("test", None, "country211"),
    "flowers102": ("test", "flowers102", "flowers102"),
    "gtsrb": ("test", "gtsrb", "gtsrb"),
    "ucf101": ("test", "ucf101", "ucf101"),
    "cars": ("test", None, "cars"),
}


def get_config(arg=None):
  locations = {key: None for key in _DATASETS}
  files = {f"{key}_{what}": None for key in _DATASETS for what in ("classnames", "templates")}
  arg = config_lib.parse_arg(arg, model="RN50", batch_size=256, n=0, tfds_data_dir=None,
                              write_predictions=False, progress=True, **locations, **files)
  config = ml_collections.ConfigDict()
  config.name = "paper"
  config.model = dict(name=arg.model, overrides={})
  config.batch_size = arg.batch_size
  config.progress = arg.progress
  config.write_predictions = arg.write_predictions

  config.evals = ml_collections.ConfigDict(sort_keys=False)  # run and report in this order
  for key, (tfds_split, default_names, default_templates) in _DATASETS.items():
    data = dict(path=arg[key], split="test", tfds_split=tfds_split,
                default_templates=default_templates,
                hint=f"not located: add :{key}=PATH_OR_TFDS_NAME to --config")
    if default_names:
      data["default_classnames"] = default_names
    if arg[f"{key}_classnames"]:
      data["classnames"] = arg[f"{key}_classnames"]
    if arg[f"{key}_templates"]:
      data["templates"] = arg[f"{key}_templates"]
    if arg.tfds_data_dir:
      data["data_dir"] = arg.tfds_data_dir
    if arg.n:
      data["num_examples"] = arg.n
    config.evals[key] = dict(type="zeroshot_classification", data=data)
  return config
