"""Fine-tune a model of the embedded world on one of its zero-shot tasks (default: shape).

  python -m cloob_jax.finetune --config=configs/finetune/synthetic.py:workdir=runs/demo \
      --workdir=runs/ft_shape_e2e
  ...:workdir=runs/demo,mode=linear_probe          # only the zero-shot-initialised head trains
  ...:workdir=runs/demo,mode=flyp,method=cloob     # both towers, CLOOB on class-prompt captions
  ...:checkpoint=RN50.safetensors,model=RN50       # from an open_clip / OpenAI / CLOOB file

Args: workdir (a training workdir) and step (-1: its latest checkpoint), or checkpoint and
model; task (a synthetic zero-shot task), mode (end_to_end, linear_probe, flyp), method
(FLYP's objective), steps, lr (-1: the mode's default), batch_size, seed (the shuffle and
FLYP's captions; the split is fixed by split_seed), num_examples (rendered, then split 80/20
by a seeded permutation), tiny (small sizes for tests).
"""

import ml_collections
from ml_collections import config_dict

from cloob_jax import config_lib

# AdamW learning rates per mode for the demo model (README, "Export and fine-tune"): the
# towers at the demo's pre-training rate, 1e-3 (a 300-step sweep over 1e-4..3e-3 on seed 0
# still rose at 3e-3 end to end); the head alone, whose init is 30x the class embeddings, at
# 0.1 (0.01..0.3 swept). Big pretrained towers want far less (WiSE-FT: 3e-5 for ViT-B).
DEFAULT_LR = {"linear_probe": 0.1, "end_to_end": 1e-3, "flyp": 1e-3}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, workdir="", step=-1, checkpoint="", model="", task="shape",
                             mode="end_to_end", method="cloob", steps=600, lr=-1.0,
                             batch_size=64, seed=0, split_seed=0, num_examples=2560,
                             tiny=False)
  config = ml_collections.ConfigDict()
  config.init = ml_collections.ConfigDict()
  config.init.workdir = arg.workdir
  config.init.step = config_dict.placeholder(int)
  if arg.step >= 0:
    config.init.step = arg.step
  config.init.checkpoint = arg.checkpoint
  config.init.model = arg.model
  # Model overrides of a checkpoint file's architecture (models.create_model), e.g.
  # dict(quick_gelu=True); a workdir's come from its own config.json.
  config.init.overrides = ml_collections.ConfigDict()
  # A TorchScript init.checkpoint (OpenAI's released .pt files) carries code; read one only
  # when this is set (for a file you trust). Pickles are read weights-only either way.
  config.init.allow_torchscript = False

  config.mode = arg.mode
  config.method = arg.method  # FLYP's contrastive objective (ignored by the other modes)
  config.beta = 8.0           # CLOOB's Hopfield beta (the demo's)
  config.seed = arg.seed

  num_examples = 320 if arg.tiny else arg.num_examples
  config.data = ml_collections.ConfigDict()
  # Any classification source of cloob_jax.evaluators.sources: here the task rendered with
  # seed 1 (the trainer's in-training evals render seed 0).
  config.data.train = ml_collections.ConfigDict(dict(
      source="synthetic", task=arg.task, num_examples=num_examples, seed=1))
  config.data.val = ml_collections.ConfigDict()  # empty: a seeded split of data.train
  config.data.val_fraction = 0.2
  config.data.split_seed = arg.split_seed

  config.batch_size = 16 if arg.tiny else arg.batch_size
  config.total_steps = arg.steps
  lr = arg.lr if arg.lr > 0 else DEFAULT_LR.get(arg.mode, 1e-4)
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
      warmup_steps=max(1, min(50, arg.steps // 10)), schedule="cosine", restarts=0,
      clip_grad_norm=1.0, clip_in_logit_units=True))
  config.fsdp = False

  config.log_every = 10 if arg.tiny else 25
  config.eval_every = config.log_every
  config.checkpoint_every = 100
  config.keep_checkpoints = 2
  config.eval_batch_size = 64 if arg.tiny else 256
  config.read_threads = 4
  config.wise_ft = ml_collections.ConfigDict()
  config.wise_ft.alphas = tuple(i / 10 for i in range(11))
  return config
