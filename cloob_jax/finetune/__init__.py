r"""Fine-tuning from a trained workdir or a checkpoint file: a zero-shot-initialised classifier.

  python -m cloob_jax.finetune --config=configs/finetune/synthetic.py:workdir=runs/demo \
      --workdir=runs/ft_shape_lp [--config.KEY=VALUE]

The image tower plus a linear head initialised from the zero-shot class embeddings, WiSE-FT's
recipe (prompt-ensemble class embeddings, normalised, times exp(logit_scale); zero bias; on
normalised image features), so at step 0 the classifier makes the zero-shot predictions.
Modes (`config.mode`): `linear_probe` (only the head trains), `end_to_end` (image tower and
head), `flyp` (both towers with this project's contrastive objective `config.method` on
class-prompt captions; the zero-shot head is rebuilt at every eval). At the end, WiSE-FT
interpolates zero-shot and fine-tuned weights for `config.wise_ft.alphas`.

The workdir gets config.json, metrics.jsonl (step 0: `zeroshot/top1` and the classifier's
`val/top1`; then loss, learning rate, `val/top1` at eval steps), orbax checkpoints with the
data-iterator state (re-running the command resumes exactly), wise_ft.{json,md,png},
finetuned.npz + finetuned.json (`cloob_jax.export`'s `params` format) and head.safetensors.

Modules: `init_model` (where the weights come from), `data` (sources, split, stream),
`classifier` (head, interpolation), `trainer` (state, step, loop), `wise_ft` (sweep, table,
plot); `__main__` is the binary.
"""

from cloob_jax.finetune.trainer import MODES
from cloob_jax.finetune.trainer import check_config
from cloob_jax.finetune.trainer import finetune

__all__ = ["MODES", "check_config", "finetune"]
