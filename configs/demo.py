"""The embedded default: CLOOB on the synthetic image-caption world, tiny towers, 2 CPU cores.

  python -m cloob_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m cloob_jax.main --config=configs/demo.py:method=clip --workdir=runs/demo_clip
"""

import ml_collections

from cloob_jax import config_lib
from cloob_jax.data import synthetic
from cloob_jax.evaluators import suites


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="cloob", steps=750, batch_size=256, seed=0, tiny=False,
                             evals=True, accum_steps=1)
  config = ml_collections.ConfigDict()
  config.seed = arg.seed
  config.method = arg.method
  # Fixed inverse temperature and Hopfield beta (the official CLOOB README's values).
  config.inv_tau = 30.0
  config.learn_inv_tau = False
  config.beta = 8.0
  if arg.method in ("siglip", "hopfield_siglip"):  # Zhai et al. 2023: s = 10, b = -10, learnt
    config.inv_tau, config.learn_inv_tau, config.init_bias = 10.0, True, -10.0

  config.model = ml_collections.ConfigDict()
  # ConvNet-tiny: three strided conv-BN layers and a dense layer over the final 6x6 map (not a
  # CLIP tower; `--config.model.name=RN-tiny` gives a tiny ModifiedResNet). Supervised on
  # labels it learns shape in a few hundred steps, the tiny ModifiedResNet barely does.
  # 48x48 images: ~25% faster than 64x64 per step (rendering included). 750 steps of batch
  # 256 keep the demo within 5 minutes on 2 CPU cores, install included (README); the
  # comparisons before it ran 1,500 steps (`steps=1500`, docs/report_1500/).
  config.model.name = "ConvNet-tiny"
  config.model.overrides = ml_collections.ConfigDict(dict(
      embed_dim=64, vision=dict(image_size=48),
      text=dict(context_length=32, width=64, heads=2, layers=3)))
  if arg.tiny:  # for tests: seconds per run (a ViT: no BatchNorm, the fastest compile)
    config.model.name = "ViT-tiny"
    config.model.overrides = ml_collections.ConfigDict(dict(
        embed_dim=32, vision=dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
        text=dict(context_length=16, width=32, heads=2, layers=1, vocab_size=49408)))

  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic"
  config.data.data_dir = ""
  config.data.cache_dir = ""  # where a gs:// data_dir's shards are copied (records only)
  config.data.seed = arg.seed
  # One grain worker process renders the scenes beside training: the same batches as 0 (a
  # single worker batches the whole stream, in order; tests/pipeline_test.py), and the loop
  # waits on data 3% of the time instead of 40% (the world is rendered in Python, in threads
  # that hold the GIL). The tests' tiny runs keep 0: no worker to start.
  config.data.num_workers = 0 if arg.tiny else 1
  # P(a training caption mentions each attribute): colour, shape, size, position, background,
  # and 'all' (every object described rather than a subset). The demo's captions name the
  # colour and shape of every object, and most (0.9) say where each one is; size and
  # background keep the world's alt-text odds. With the world's own mix
  # (synthetic.CAPTION_MENTION: colour and shape 0.75, position 0.35, all 0.65) many captions
  # fit several images of a batch; in the earlier demo (RN-tiny, batch 64) CLOOB collapsed
  # onto one direction on one seed in three and neither method learnt position. Try e.g.
  # --config.data.caption_mention.colour=0.4 to see which features training picks up first.
  config.data.caption_mention = ml_collections.ConfigDict(
      dict(synthetic.CAPTION_MENTION, colour=1.0, shape=1.0, position=0.9, all=1.0))

  # Records in families of this many minimal pairs (same colours and cells, other shapes and
  # sizes; synthetic.family_member), shuffled as units so that each batch holds whole families.
  # 1: independent scenes. With 4, CLIP learns shape at batch 64 and CLOOB does not
  # (docs/results.md, "Minimal pairs").
  config.data.family_size = 1

  config.fsdp = False  # shard parameters and optimizer state over the data axis
  # Batch 256: the Hopfield memory is the batch. At batch 64 CLOOB stayed at chance on shape
  # and size on every seed (docs/batch64/report.md, docs/families/report.md); at 256 it learns
  # colour, position and count on every seed at 1,500 steps, and shape and size on seed 0 but
  # not on seeds 1 and 2 (docs/report_1500/report.md; 750 steps: docs/report.md). CLIP learns
  # every task on every seed. The paper trained at 512.
  config.batch_size = arg.batch_size
  # Micro-batches per step: the same full-batch gradient (every negative, the whole Hopfield
  # memory) at the activation memory of batch_size / accum_steps rows, for one extra forward.
  # BatchNorm (ConvNet-tiny) normalises each micro-batch with its own statistics and updates
  # its running statistics once per micro-batch (train._accumulated_value_and_grad).
  config.accum_steps = arg.accum_steps
  config.total_steps = arg.steps
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
      warmup_steps=max(1, min(100, arg.steps // 10)),
      schedule="cosine", restarts=0, clip_grad_norm=1.0, clip_in_logit_units=True))
  # One clipping threshold for every method, in logit units: InfoLOOB and CLOOB divide their
  # loss by s = 1/tau (docs/method.md), so their gradients are s times smaller and training clips
  # them at clip_grad_norm / s (`optim.clip_threshold`, from the final config, so
  # --config.method and --config.inv_tau overrides keep it right). Without this CLIP's large
  # early gradients are clipped and InfoLOOB's are not, and Adam's second moment then holds
  # InfoLOOB back.

  config.log_every = 20
  config.checkpoint_every = 200
  config.keep_checkpoints = 2
  # Zero-shot tasks of the world, retrieval, the embedding analyses and the attribute probes
  # (what the frozen embeddings still hold), at the end of training.
  config.eval_batch_size = 256
  n = 32 if arg.tiny else 256
  config.evals = (suites.synthetic_world(n=n, retrieval_n=n, probe_n=512, probe=False,
                                        log_steps=arg.steps, attributes=not arg.tiny)
                  if arg.evals else ml_collections.ConfigDict())
  return config
