r"""CLOOB on Conceptual Captions 3M, the paper's setup (docs/method.md).

  python -m cloob_jax.main --config=configs/cc3m.py:model=RN50,data_dir=/data/cc3m \
      --workdir=gs://bucket/cc3m_rn50
Args: model (RN50|RN101|RN50x4|ViT-B/32|ViT-B/16), method (cloob|clip|infoloob|siglip|
hopfield_infonce|hopfield_siglip), data_dir (shards from `python -m cloob_jax.data.convert`: a
local folder, a gcsfuse mount, or gs:// with cache_dir=/local/disk to copy them to), epochs,
batch_size, accum_steps (micro-batches per step: batch_size / accum_steps rows each, the same
full-batch gradient at a micro-batch's memory).
"""

import ml_collections

from cloob_jax import config_lib

CC3M_TRAIN_SIZE = 2_800_000  # image-caption pairs that usually still download from CC3M


def paper_config(arg, *, dataset_size, lr, warmup_steps, restarts):
  """The paper's recipe shared by cc3m.py and yfcc.py."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = arg.method
  # The official README command: fixed 1/tau = 30, beta = 8.
  config.inv_tau = 30.0
  config.learn_inv_tau = arg.method == "clip"  # CLIP learns its temperature, CLOOB fixes it
  config.beta = 8.0
  if arg.method == "clip":
    config.inv_tau = 1 / 0.07
  if arg.method in ("siglip", "hopfield_siglip"):  # Zhai et al. 2023: s = 10, b = -10, learnt
    config.inv_tau, config.learn_inv_tau, config.init_bias = 10.0, True, -10.0

  resnet = arg.model.startswith("RN")
  config.model = ml_collections.ConfigDict()
  config.model.name = arg.model
  config.model.overrides = ml_collections.ConfigDict(dict(dtype=arg.dtype))

  config.data = ml_collections.ConfigDict()
  config.data.source = "records"
  config.data.data_dir = arg.data_dir
  # ArrayRecord reads local files: a gs:// data_dir is copied here first (see README, On a pod).
  config.data.cache_dir = arg.cache_dir
  config.data.seed = 0
  config.data.num_workers = arg.workers

  config.fsdp = arg.model.startswith("ViT-L")  # shard what is too big to replicate
  config.batch_size = arg.batch_size
  # Gradient accumulation: the global batch runs as accum_steps micro-batches of
  # batch_size / accum_steps rows (each split over the devices), at a micro-batch's activation
  # memory. The loss still sees all batch_size embeddings (every negative, the whole Hopfield
  # memory), so the gradient is the full batch's; the cost is one extra forward pass. BatchNorm
  # towers (the ResNets) normalise each micro-batch with its own statistics and update their
  # running statistics once per micro-batch.
  config.accum_steps = arg.accum_steps
  config.total_steps = arg.epochs * dataset_size // arg.batch_size
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=lr, b1=0.9, b2=0.999 if resnet else 0.98, eps=1e-8 if resnet else 1e-6,
      weight_decay=0.1, warmup_steps=warmup_steps, schedule="cosine", restarts=restarts,
      clip_grad_norm=0.0))

  config.log_every = 100
  config.checkpoint_every = 2000
  config.keep_checkpoints = 3
  config.evals = ml_collections.ConfigDict()
  return config


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="RN50", method="cloob", data_dir="",
                             cache_dir="", epochs=31,
                             batch_size=512, accum_steps=1, workers=8, dtype="bfloat16")
  # CC3M runs: lr 1e-3, 10k warmup steps, cosine with restarts.
  return paper_config(arg, dataset_size=CC3M_TRAIN_SIZE, lr=1e-3, warmup_steps=10_000,
                      restarts=1)
