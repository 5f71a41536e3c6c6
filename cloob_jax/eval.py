r"""The evaluation binary: zero-shot classification, retrieval, probes and analyses of a model.

  python -m cloob_jax.eval --config=configs/eval/synthetic.py --workdir=DIR [--step=N]
  python -m cloob_jax.eval --config=configs/eval/paper.py:model=RN50,imagenet=tfds:imagenet2012 \
      --checkpoint=RN50.safetensors --output=results.json

The model comes from a training workdir (`checkpoint.restore_variables`; the architecture
from the run's own config) or from an open_clip / OpenAI state dict (`.safetensors`, `.pt`)
converted by `interop.open_clip.load` with the architecture named in the eval config
(`config.model.name`). Every entry of `config.evals` is built as a plug-in
(`evaluators.build`); entries whose dataset was not located are skipped with a message.

Writes `{task: {metric: value}}` as JSON to --output (default: DIR/eval/NAME[_stepN].json
for a workdir, ./eval_NAME.json for a checkpoint), a markdown table beside it (same name,
.md), and prints the table. With `config.write_predictions`, the zero-shot predictions go
to NAME.predictions.npz as well ('{task}.labels' int [n], '{task}.top5' int [n, 5]).
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np

from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import evaluators
from cloob_jax import models
from cloob_jax import paths
from cloob_jax.experiments import report

# The results table (eval.markdown before the reporter moved to experiments/report.py).
markdown = report.results_markdown


def load_model(config, *, workdir: str | None = None, checkpoint: str | None = None,
               step: int | None = None, allow_torchscript: bool = False):
  """(module, variables, description) from a workdir or an open_clip checkpoint.

  `allow_torchscript`: read a TorchScript archive (OpenAI's released .pt files), which
  carries code; without it such a file is refused.
  """
  if bool(workdir) == bool(checkpoint):
    raise ValueError("give exactly one of --workdir and --checkpoint")
  if checkpoint:
    from cloob_jax.interop import open_clip  # pylint: disable=g-import-not-at-top
    model = config.get("model") or {}
    if step is not None:
      logging.warning("--step is ignored with --checkpoint")
    # The architecture from the config; an original CLOOB checkpoint may name its own, which
    # the config's, when given, must agree with.
    name, overrides, state_dict = open_clip.read_checkpoint(
        checkpoint, model.get("name"), what=":model=NAME in --config",
        allow_torchscript=allow_torchscript, **config_lib.as_dict(model.get("overrides")))
    variables = open_clip.convert_state_dict(state_dict, name, **overrides)
    return models.create_model(name, **overrides), variables, f"{checkpoint} ({name})"
  from cloob_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  # The newest intact step when none is named (a damaged latest one is skipped in one line).
  train_config, variables = checkpoint_lib.restore_variables(workdir, step=step)
  module = models.create_model(train_config.model.name,
                               **config_lib.as_dict(train_config.model.get("overrides")))
  where = f"{workdir}" + (f" step {step}" if step is not None else " (latest)")
  return module, variables, f"{where} ({train_config.model.name})"


def evaluate(config, module, variables, *, mesh=None):
  """Runs every eval of `config.evals`.

  `mesh` defaults to every device of every process. On several processes each one reads and
  embeds only its share of each image set; the evaluators sum counts and gather small
  per-example results (embeddings for retrieval, the probe and the analyses), so every
  process returns the same results (`evaluators.Embedder`).

  Returns:
    (results {task: {metric: value}}, skipped {task: reason}, {task: evaluator}).
  """
  embedder = evaluators.Embedder(module, batch_size=config.get("batch_size", 256), mesh=mesh,
                                 progress=config.get("progress", True))
  results: dict[str, dict[str, float]] = {}
  skipped: dict[str, str] = {}
  built = {}
  for name, entry in (config.get("evals") or {}).items():
    try:
      built[name] = evaluators.build(name, entry, embedder)
    except evaluators.DataUnavailable as e:
      skipped[name] = str(e)
      logging.warning("skipping %s: %s", name, e)
  for name, evaluator in built.items():
    start = time.time()
    evaluators.add_metrics(results, name, evaluator.run(variables))
    logging.info("%s: %s (%.1f s)", name, results.get(name), time.time() - start)
  return results, skipped, built


def default_output(config, workdir: str | None, step: int | None) -> str:
  name = config.get("name", "eval")
  if workdir:
    suffix = f"_step{step}" if step is not None else ""
    return paths.join(workdir, "eval", f"{name}{suffix}.json")
  return f"eval_{name}.json"


def run(config, *, workdir: str | None = None, checkpoint: str | None = None,
        output: str | None = None, step: int | None = None, mesh=None,
        allow_torchscript: bool = False) -> dict:
  """Loads the model, evaluates, writes JSON + markdown (+ predictions); returns the results.

  Every path (workdir, checkpoint, output) may be local or a gs:// URL.
  """
  import jax  # pylint: disable=g-import-not-at-top
  for what, given in (("--workdir", workdir), ("--checkpoint", checkpoint), ("--output", output)):
    if given:
      paths.check(given, what)
  module, variables, description = load_model(config, workdir=workdir, checkpoint=checkpoint,
                                              step=step, allow_torchscript=allow_torchscript)
  results, skipped, built = evaluate(config, module, variables, mesh=mesh)
  table = report.results_markdown(results, skipped,
                                  title=f"{config.get('name', 'eval')}: {description}")
  output = output or default_output(config, workdir, step)
  if jax.process_index() == 0:
    paths.write_text(output, json.dumps(results, indent=1) + "\n")
    stem = output[:-len(".json")] if output.endswith(".json") else output
    paths.write_text(stem + ".md", table)
    if config.get("write_predictions", False):
      arrays = {}
      for name, evaluator in built.items():
        for key, value in (getattr(evaluator, "predictions", None) or {}).items():
          arrays[f"{name}.{key}"] = np.asarray(value)
      buffer = io.BytesIO()
      np.savez(buffer, **arrays)
      paths.write_bytes(stem + ".predictions.npz", buffer.getvalue())
    print(table, flush=True)
    logging.info("wrote %s and %s", output, stem + ".md")
  return results


def define_flags(flag_values=None):
  """Defines --config, --workdir, --checkpoint, --output, --step and the multi-process flags
  (--coordinator_address, --num_processes, --process_id, --num_cpu_devices, as
  cloob_jax.main's) on `flag_values`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flag_values if flag_values is not None else flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Eval config: configs/eval/NAME.py[:ARGS].",
                                  flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir to evaluate.", flag_values=flag_values)
  flags.DEFINE_string("checkpoint", None, "open_clip/OpenAI state dict (.safetensors, .pt).",
                      flag_values=flag_values)
  flags.DEFINE_string("output", None, "JSON file to write; the markdown table goes beside it.",
                      flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).",
                       flag_values=flag_values)
  flags.DEFINE_bool("allow_torchscript", False,
                    "Read a TorchScript --checkpoint (OpenAI's released .pt files). Such an "
                    "archive carries code: only for files you trust.", flag_values=flag_values)
  from cloob_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.define_flags(flag_values)  # --coordinator_address, --num_processes, ...
  return flag_values


def main_with_flags(flag_values) -> dict:
  """Evaluates as the flags say; jax (and jax.distributed) must be set up already (`main`)."""
  if flag_values.config is None:
    raise errors.UserError("--config is required")
  return run(flag_values.config, workdir=flag_values.workdir, checkpoint=flag_values.checkpoint,
             output=flag_values.output, step=flag_values.step,
             allow_torchscript=flag_values.allow_torchscript)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from cloob_jax import distributed  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  # Before anything starts a jax backend. Each process then embeds its share of every image
  # set, all get the same results, and only process 0 writes files.
  distributed.initialize_from_flags(flags.FLAGS)
  main_with_flags(flags.FLAGS)  # a user error (a bad path, a damaged checkpoint) is one line: cli.run


if __name__ == "__main__":
  from cloob_jax import cli  # pylint: disable=g-import-not-at-top
  # Flags are defined here, not at import: cloob_jax.main defines --config/--workdir too, and
  # tests import both modules into one process.
  define_flags()
  from cloob_jax import distributed  # pylint: disable=g-import-not-at-top
  cli.run(main, key_modules=(distributed,))
