r"""Every zero-shot task of the synthetic world, retrieval, the embedding analyses and probes.

  python -m cloob_jax.eval --config=configs/eval/synthetic.py --workdir=DIR
  python -m cloob_jax.eval --config=configs/eval/synthetic.py:model=ViT-tiny,n=128 \
      --checkpoint=weights.safetensors

Args: model (architecture for --checkpoint), n (images per zero-shot task), retrieval_n
(captioned images for retrieval and the analyses), probe_n (images to fit the probe),
batch_size, seed (which rendering of the world), progress.

Images are rendered at the model's resolution. The linear probe reads the shape of a single
object (the hard feature), with its own training images (a different seed); the attribute
probes read every attribute off the image and the caption embeddings of probe_n scenes.
"""

from cloob_jax.evaluators import suites
from cloob_jax import config_lib
import ml_collections


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="ViT-tiny", n=512, retrieval_n=512, probe_n=1024,
                              batch_size=256, seed=0, log_steps=1000, progress=True)
  config = ml_collections.ConfigDict()
  config.name = "synthetic"
  config.model = dict(name=arg.model, overrides={})
  config.batch_size = arg.batch_size
  config.progress = arg.progress
  config.write_predictions = False

  config.evals = suites.synthetic_world(n=arg.n, retrieval_n=arg.retrieval_n,
                                       probe_n=arg.probe_n, seed=arg.seed,
                                       log_steps=arg.log_steps)
  return config
