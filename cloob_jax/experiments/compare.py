"""Trains several objectives with several seeds under one budget, evaluates and reports them.

  python -m cloob_jax.experiments.compare --config=configs/demo.py --methods=clip,cloob \
      --seeds=3 --workdir=DIR [--config.KEY=VALUE ...]

Each (method, seed) trains with `train.train_and_evaluate` in `DIR/<method>/seed<k>`, from the
config file called with `method=<method>,seed=<k>` added to its `:args` (so the config must
accept both), and nothing else differs between the runs. `--config.KEY=VALUE` overrides a field
of every run's config alike, as it does for `cloob_jax.main` (e.g.
`--config.data.caption_mention.colour=0.4`). A run that finished is reused and a run that was
interrupted resumes from its checkpoint, so re-running the same command after a crash or a
Ctrl-C continues where it stopped; a run directory written under a different config (other
overrides, an edited config file) is refused rather than mixed in. At the end it writes

  DIR/report.md    final metrics per task and method as mean ± std over seeds, the number of
                   seeds, the budget, the machine and the exact commands;
  DIR/report.json  the same numbers, and every run's final metrics;
  DIR/report.png   training-loss curves (mean and range over seeds), the mean cosine within
                   a training batch (collapse) and per-task bars.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shlex
import sys
import time
from typing import Any, Sequence

from absl import flags
from absl import logging
import numpy as np

from cloob_jax import cli
from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import objectives
from cloob_jax import paths
from cloob_jax import workdir as workdir_lib

_CONFIG = flags.DEFINE_string("config", None, "Config file, optionally with :args "
                              "(it must accept method= and seed= args).")
_METHODS = flags.DEFINE_list("methods", ["clip", "cloob"], "Objectives to compare.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per method: 0 .. seeds-1.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the runs and the report.")
flags.mark_flags_as_required(["config", "workdir"])
_OVERRIDE_PREFIX = "--config."  # --config.KEY=VALUE, taken out of argv before absl parses it
_overrides: list[str] = []

DONE_FILE = "done.json"
# The final metrics shown in the report's main table, in this order: (metric key, label).
_ZEROSHOT_METRIC = "top1"
_RETRIEVAL_METRICS = (("retrieval/image_to_text_recall@1", "image→text R@1"),
                      ("retrieval/image_to_text_recall@5", "image→text R@5"),
                      ("retrieval/text_to_image_recall@1", "text→image R@1"),
                      ("retrieval/text_to_image_recall@5", "text→image R@5"))
_ANALYSIS_METRICS = (("embedding_analysis/image_effective_eigenvalues", "image eff. eigenvalues"),
                     ("embedding_analysis/text_effective_eigenvalues", "text eff. eigenvalues"),
                     ("embedding_analysis/alignment", "alignment"),
                     ("embedding_analysis/image_uniformity", "image uniformity"))


def run_dir(workdir: str, method: str, seed: int) -> str:
  return paths.join(workdir, method, f"seed{seed}")


def final_metrics(rows: list[dict[str, Any]], step: int) -> dict[str, float]:
  """Every metric logged at `step` (training and evals), merged; later rows win."""
  merged = {}
  for row in rows:
    if row["step"] == step:
      merged.update({k: v for k, v in row.items() if k != "step"})
  return merged


def metric_curve(rows: list[dict[str, Any]], key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
  """(steps, values of `key`) of the training log, one point per step (a resumed run repeats
  steps)."""
  points = {row["step"]: row[key] for row in rows if key in row}
  steps = np.array(sorted(points))
  return steps, np.array([points[s] for s in steps])


def seed_curves(logs: list[list[dict[str, Any]]], key: str = "loss"):
  """(steps, [runs, steps] values) of `key` over the runs' training logs that have it, cut to
  the shortest; None when none has."""
  curves = [metric_curve(rows, key) for rows in logs]
  curves = [c for c in curves if c[0].size]
  if not curves:
    return None
  length = min(c[0].size for c in curves)
  return curves[0][0][:length], np.stack([c[1][:length] for c in curves])


def train_one(config, directory: str) -> dict[str, Any] | None:
  """Trains (or resumes) one run; writes done.json with its final metrics and wall time.

  Returns None when training stopped before the last step (a signal saved a checkpoint).
  """
  done = paths.join(directory, DONE_FILE)
  if paths.exists(done):
    return json.loads(paths.read_text(done))
  from cloob_jax import train
  start = time.time()
  train.train_and_evaluate(config, directory)
  rows = workdir_lib.read_metrics(directory)
  if "loss" not in final_metrics(rows, config.total_steps):
    return None  # stopped early (SIGTERM/SIGINT saved a checkpoint): not done, resume later
  result = {"method": config.method, "seed": config.seed, "total_steps": config.total_steps,
            "wall_seconds_last_session": time.time() - start,
            "metrics": final_metrics(rows, config.total_steps)}
  # Atomic: a run is 'done' only once its results are complete.
  paths.write_text(done, json.dumps(result, indent=1))
  return result


def _override_args(overrides: Sequence[str]) -> str:
  """' --config.KEY=VALUE ...' for a shell command line ('' without overrides)."""
  return "".join(" " + shlex.quote(_OVERRIDE_PREFIX + item) for item in overrides)


def check_same_config(config, directory: str) -> None:
  """Refuses to reuse or resume a run directory that was trained with a different config."""
  found = workdir_lib.config_changes(config, directory)
  if found:
    raise errors.UserError(f"{directory} was trained with a different config ({found[0]}); re-run "
                           "with the same config file, args and --config overrides, or use "
                           "another --workdir")


def task_names(config) -> list[str]:
  """Zero-shot tasks of the config's evals, in the config's order."""
  return [name for name, entry in config.evals.items()
          if entry.get("type") == "zeroshot_classification"]


def summarise(results: dict[str, list[dict[str, Any]]], tasks: list[str]):
  """-> rows [(label, {method: (mean, std, n)})] of the report's table."""
  keys = [(f"{t}/{_ZEROSHOT_METRIC}", f"zero-shot {t} (top-1)") for t in tasks]
  keys += list(_RETRIEVAL_METRICS) + list(_ANALYSIS_METRICS)
  keys += [(f"{t}/class_cosine", f"class cosine, {t}") for t in tasks]
  keys += [("loss", "final training loss"),
           ("image_mean_cosine", "mean cosine in the last batch, images"),
           ("text_mean_cosine", "mean cosine in the last batch, captions")]
  rows = []
  for key, label in keys:
    cells = {}
    for method, runs in results.items():
      values = np.array([r["metrics"][key] for r in runs if key in r["metrics"]], np.float64)
      if values.size:
        cells[method] = (values.mean(), values.std(ddof=1) if values.size > 1 else 0.0,
                         values.size)
    if cells:
      rows.append((key, label, cells))
  return rows


def _is_fraction(key: str) -> bool:
  return key.endswith(f"/{_ZEROSHOT_METRIC}") or key.startswith("retrieval/")


def _cell(key: str, mean: float, std: float) -> str:
  if _is_fraction(key):
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
  return f"{mean:.3f} ± {std:.3f}"


def markdown_report(config, config_spec: str, methods: list[str], seeds: int,
                    results: dict[str, list[dict[str, Any]]], rows, chance: dict[str, float],
                    command: str, overrides: Sequence[str] = ()) -> str:
  """`rows`: summarise(results, task_names(config)), the table shared with report.json."""
  tasks = task_names(config)
  walls = [r["wall_seconds_last_session"] for runs in results.values() for r in runs]
  lines = [
      f"# {' vs '.join(m.upper() for m in methods)} on `{config_spec.partition(':')[0]}`",
      "",
      f"Mean ± standard deviation over **{seeds} seeds** (0..{seeds - 1}) per method; every run "
      f"has the same budget: **{config.total_steps} steps of batch {config.batch_size}** "
      f"({config.total_steps * config.batch_size:,} image-caption pairs), model "
      f"`{config.model.name}` with the config's overrides, learning rate "
      f"{config.optimizer.lr:g}, 1/τ = {config.inv_tau:g}"
      f"{' (learnt)' if config.get('learn_inv_tau') else ' (fixed)'}, β = {config.beta:g} ("
      + (", ".join(m for m in methods if objectives.get(m).needs_beta) or "none of these")
      + " only). Only `method` and `seed` differ between runs."
      + (" Config overrides of every run: " + ", ".join(f"`{o}`" for o in overrides) + "."
         if overrides else ""),
      "",
      "| metric | " + " | ".join(methods) + " | chance |",
      "|---|" + "---:|" * (len(methods) + 1),
  ]
  for key, label, cells in rows:
    best = None  # bold only where higher is plainly better: accuracies and recalls
    if len(cells) > 1 and _is_fraction(key):
      means = {m: c[0] for m, c in cells.items()}
      best = max(means, key=means.get)
    row = []
    for method in methods:
      if method not in cells:
        row.append("")
        continue
      mean, std, n = cells[method]
      text = _cell(key, mean, std) + ("" if n == seeds else f" (n={n})")
      row.append(f"**{text}**" if method == best else text)
    task = key.partition("/")[0]
    ch = f"{100 * chance[task]:.1f}" if key.endswith(f"/{_ZEROSHOT_METRIC}") and task in chance \
        else ""
    lines.append(f"| {label} | " + " | ".join(row) + f" | {ch} |")
  lines += [
      "",
      "Accuracies and recalls in %; the best mean of each accuracy and recall row is bold. "
      "Losses of different objectives are on different scales and are not compared. Effective "
      "eigenvalues: how many eigenvalues of the embeddings' covariance make up 99% of its trace "
      f"(out of the embedding width, {config.model.overrides.get('embed_dim', '?')}). Alignment "
      "and uniformity (Wang & Isola): lower is more aligned / more uniform. Class cosine: the "
      "mean cosine between the prompt-ensemble text embeddings of a task's distinct classes; "
      "near 1 the text tower does not tell the class names apart, and the task stays at chance "
      "whatever the image tower encodes. Mean cosine in a batch: between the distinct image (or "
      "caption) embeddings of a training batch; near 1 that tower has collapsed onto one "
      "direction (the plot shows it over training).",
      "",
      "Per run (zero-shot top-1, %):",
      "",
      "| method | seed | " + " | ".join(tasks) + " |",
      "|---|---:|" + "---:|" * len(tasks),
  ]
  for method in methods:
    for run in results[method]:
      cells = [run["metrics"].get(f"{t}/{_ZEROSHOT_METRIC}") for t in tasks]
      lines.append(f"| {method} | {run['seed']} | " + " | ".join(
          "" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
  lines += [
      "",
      "## Budget and machine",
      "",
      f"- Wall time per run: {min(walls) / 60:.1f}–{max(walls) / 60:.1f} min (training and "
      "evaluation; a resumed run counts only its last session).",
      f"- Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python "
      f"{platform.python_version()}, jax {_version('jax')}, flax {_version('flax')}.",
      "",
      "## Commands",
      "",
      "The comparison (re-running it reuses finished runs and resumes interrupted ones):",
      "",
      "```bash",
      command,
      "```",
      "",
      "Each run on its own, the same training:",
      "",
      "```bash",
  ]
  path, _, given = config_spec.partition(":")
  for method in methods:
    for seed in range(seeds):
      args = ",".join([a for a in given.split(",") if a] + [f"method={method}", f"seed={seed}"])
      lines.append(f"python -m cloob_jax.main --config={path}:{args} "
                   f"--workdir={run_dir('DIR', method, seed)}"
                   + _override_args(overrides))
  lines += ["```", "", "![training curves and per-task accuracy](report.png)", ""]
  return "\n".join(lines)


def _version(package: str) -> str:
  try:
    from importlib import metadata
    return metadata.version(package)
  except Exception:  # pylint: disable=broad-except
    return "?"


def plot_report(path: str, config, methods: list[str], workdir: str, seeds: int,
                results: dict[str, list[dict[str, Any]]], chance: dict[str, float]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = task_names(config)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  fig, axes = plt.subplots(1, len(methods) + 2, figsize=(4.2 * (len(methods) + 2) + 2, 3.8),
                           gridspec_kw={"width_ratios": [1] * (len(methods) + 1) + [2.2]})
  logs = {m: [workdir_lib.read_metrics(run_dir(workdir, m, s)) for s in range(seeds)] for m in methods}
  for i, method in enumerate(methods):
    ax = axes[i]
    found = seed_curves(logs[method])
    if found:
      steps, stacked = found
      ax.fill_between(steps, stacked.min(0), stacked.max(0), color=colours[i], alpha=0.25,
                      linewidth=0)
      ax.plot(steps, stacked.mean(0), color=colours[i],
              label=f"{method} (mean of {len(stacked)})")
    ax.set_title(f"{method}: training loss")
    ax.set_xlabel("step")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
  # Collapse: the mean cosine between distinct embeddings of a training batch (near 1: every
  # image, or every caption, is embedded in the same direction).
  ax = axes[len(methods)]
  for i, method in enumerate(methods):
    for key, style, side in (("text_mean_cosine", "-", "text"), ("image_mean_cosine", "--",
                                                                   "image")):
      found = seed_curves(logs[method], key)
      if found:
        ax.plot(found[0], found[1].mean(0), style, color=colours[i], label=f"{method}, {side}")
  ax.set_title("mean cosine within a batch")
  ax.set_xlabel("step")
  ax.set_ylim(-0.05, 1.05)
  ax.legend(loc="lower right", fontsize=8)
  ax.grid(alpha=0.3)
  ax = axes[-1]
  width = 0.8 / len(methods)
  x = np.arange(len(tasks))
  for i, method in enumerate(methods):
    values = [[r["metrics"].get(f"{t}/{_ZEROSHOT_METRIC}", np.nan) for r in results[method]]
              for t in tasks]
    means = 100 * np.array([np.mean(v) for v in values])
    stds = 100 * np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
           color=colours[i], label=method)
  for j, t in enumerate(tasks):
    ax.hlines(100 * chance.get(t, np.nan), j - 0.45, j + 0.45, colors="black",
              linestyles="dashed", linewidth=1, label="chance" if j == 0 else None)
  ax.set_xticks(x, [t.replace("heldout_combination", "held-out\ncombination") for t in tasks],
                fontsize=8)
  ax.set_ylabel("zero-shot top-1 accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"zero-shot accuracy after {config.total_steps} steps "
               f"(mean ± std, {seeds} seeds)")
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  paths.write_bytes(path, buffer.getvalue())
  plt.close(fig)


def chance_levels(config) -> dict[str, float]:
  from cloob_jax.data import synthetic
  tasks = synthetic.zeroshot_tasks()
  out = {}
  for name, entry in config.evals.items():
    if entry.get("type") == "zeroshot_classification":
      task = entry.get("data", {}).get("task", name)
      if task in tasks:
        out[name] = tasks[task].chance
  return out


def compare(config_spec: str, methods: list[str], seeds: int, workdir: str,
            command: str | None = None, overrides: Sequence[str] = ()
            ) -> dict[str, Any] | None:
  """Runs (or reuses) every (method, seed) run, then writes report.{md,json,png}.

  `overrides`: 'KEY=VALUE' items applied to every run's config (`config_lib.apply_override`).
  """
  if seeds < 1:
    raise errors.UserError(f"--seeds must be at least 1, got {seeds}")
  for method in methods:
    if method not in config_lib.METHODS:
      raise errors.UserError(f"unknown method {method!r}; choose from {config_lib.METHODS}")
  configs = {(m, s): config_lib.load_config_file(config_spec, method=m, seed=s)
             for m in methods for s in range(seeds)}
  for (method, seed), config in configs.items():  # refuse bad input before the first run
    for item in overrides:
      config_lib.apply_override(config, item)
    config_lib.validate(config)
    check_same_config(config, run_dir(workdir, method, seed))
  paths.makedirs(workdir, "--workdir")
  command = command or (f"python -m cloob_jax.experiments.compare --config={config_spec} "
                        f"--methods={','.join(methods)} --seeds={seeds} --workdir={workdir}"
                        + _override_args(overrides))
  results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
  for (method, seed), config in configs.items():
    directory = run_dir(workdir, method, seed)
    reused = paths.exists(paths.join(directory, DONE_FILE))
    print(f"=== {method}, seed {seed}: {'finished before, reused' if reused else 'training'} "
          f"({directory})", flush=True)
    result = train_one(config, directory)
    if result is None:
      print(f"Stopped before {method}, seed {seed} finished; re-run the same command to resume. "
            "No report written.", flush=True)
      return None
    results[method].append(result)
  first = configs[(methods[0], 0)]
  chance = chance_levels(first)
  rows = summarise(results, task_names(first))
  report = markdown_report(first, config_spec, methods, seeds, results, rows, chance, command,
                           overrides)
  paths.write_text(paths.join(workdir, "report.md"), report)
  summary = {"methods": methods, "seeds": seeds, "config": config_spec,
             "overrides": list(overrides),
             "rows": {key: {m: dict(zip(("mean", "std", "n"), c)) for m, c in cells.items()}
                      for key, _, cells in rows},
             "runs": results}
  paths.write_text(paths.join(workdir, "report.json"), json.dumps(summary, indent=1))
  plot_report(paths.join(workdir, "report.png"), first, methods, workdir, seeds, results,
              chance)
  print(report, flush=True)
  print(f"Wrote {paths.join(workdir, 'report.md')}, {paths.join(workdir, 'report.json')} "
        f"and {paths.join(workdir, 'report.png')}", flush=True)
  return summary


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  command = "python -m cloob_jax.experiments.compare " + " ".join(
      shlex.quote(a) for a in sys.argv[1:])
  compare(_CONFIG.value, _METHODS.value, _SEEDS.value, _WORKDIR.value, command=command,
          overrides=_overrides)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, after taking `--config.KEY=VALUE` items out of argv (absl knows only
  `--config`, a plain string here: each run calls the config file with its own args)."""
  _overrides[:] = [a[len(_OVERRIDE_PREFIX):] for a in argv[1:] if a.startswith(_OVERRIDE_PREFIX)]
  return flags.FLAGS([a for a in argv if not a.startswith(_OVERRIDE_PREFIX)])


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags)
