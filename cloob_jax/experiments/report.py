"""Reports of results: summaries of training logs, markdown tables, the comparison's report.

One markdown table writer, `table`, serves the results table of the evaluation binary and of
training's last eval (`results_markdown`) and the comparison's report.md (`markdown_report`);
`json_report` holds report.json's numbers. Nothing here trains or reads files: callers pass the
rows of metrics.jsonl (`workdir.read_metrics`) and the runs' results.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Iterable, Sequence

import numpy as np

from cloob_jax import objectives

# Metric names (the part after 'task/') shown as percentages; the JSON keeps fractions.
_FRACTION_PREFIXES = ("top", "mean_per_class", "image_to_text", "text_to_image", "val_top")
# The final metrics shown in the comparison's main table, in this order: (metric key, label).
ZEROSHOT_METRIC = "top1"
_RETRIEVAL_METRICS = (("retrieval/image_to_text_recall@1", "image→text R@1"),
                      ("retrieval/image_to_text_recall@5", "image→text R@5"),
                      ("retrieval/text_to_image_recall@1", "text→image R@1"),
                      ("retrieval/text_to_image_recall@5", "text→image R@5"))
_ANALYSIS_METRICS = (("embedding_analysis/image_effective_eigenvalues", "image eff. eigenvalues"),
                     ("embedding_analysis/text_effective_eigenvalues", "text eff. eigenvalues"),
                     ("embedding_analysis/alignment", "alignment"),
                     ("embedding_analysis/image_uniformity", "image uniformity"))
_NOTES = (
    "Accuracies and recalls in %; the best mean of each accuracy and recall row is bold. "
    "Losses of different objectives are on different scales and are not compared. Effective "
    "eigenvalues: how many eigenvalues of the embeddings' covariance make up 99% of its trace "
    "(out of the embedding width, {embed_dim}). Alignment "
    "and uniformity (Wang & Isola): lower is more aligned / more uniform. Class cosine: the "
    "mean cosine between the prompt-ensemble text embeddings of a task's distinct classes; "
    "near 1 the text tower does not tell the class names apart, and the task stays at chance "
    "whatever the image tower encodes. Mean cosine in a batch: between the distinct image (or "
    "caption) embeddings of a training batch; near 1 that tower has collapsed onto one "
    "direction (the plot shows it over training).")

Results = dict[str, list[dict[str, Any]]]  # {method: [a run's done.json, ...]}


# Summaries of metrics.jsonl rows ({'step': k, metric: value, ...}, as `MetricWriter` writes).

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


def summarise(results: Results, tasks: list[str]):
  """-> rows [(key, label, {method: (mean, std, n)})] of the comparison's table."""
  keys = [(f"{t}/{ZEROSHOT_METRIC}", f"zero-shot {t} (top-1)") for t in tasks]
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


# Cells and tables.

def is_fraction(key: str) -> bool:
  """Whether a metric ('top1', or 'task/top1') is an accuracy or recall, shown in %."""
  return key.rpartition("/")[2].startswith(_FRACTION_PREFIXES)


def value_cell(metric: str, value: float) -> str:
  """One result: accuracies and recalls in % to 2 decimals, whole numbers bare."""
  if is_fraction(metric):
    return f"{100 * value:.2f}"
  if float(value).is_integer():
    return str(int(value))
  return f"{value:.4g}"


def mean_std_cell(key: str, mean: float, std: float) -> str:
  """Mean ± std over seeds: accuracies and recalls in % to 1 decimal."""
  if is_fraction(key):
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
  return f"{mean:.3f} ± {std:.3f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  """The lines of a markdown table: the first column (labels) left-aligned, the rest right."""
  lines = [_table_row(header), "|---|" + "---:|" * (len(header) - 1)]
  return lines + [_table_row(row) for row in rows]


def _table_row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def results_markdown(results: dict[str, dict[str, float]], skipped: dict[str, str] | None = None,
                     title: str | None = None) -> str:
  """Tables of results {task: {metric: value}}, tasks as rows; accuracies in %.

  Tasks share a table when one's metric names include the other's (zero-shot tasks with and
  without top-5), the missing cells left blank; other tasks get tables of their own.
  """
  lines = [f"## {title}", ""] if title else []
  groups: list[tuple[list[str], list[str]]] = []  # (columns, tasks)
  for task, values in results.items():
    for columns, tasks in groups:
      if set(values) <= set(columns) or set(columns) <= set(values):
        columns.extend(c for c in values if c not in columns)
        tasks.append(task)
        break
    else:
      groups.append((list(values), [task]))
  for columns, tasks in groups:
    lines += table(["task", *columns],
                   ([task] + [value_cell(c, results[task][c]) if c in results[task] else ""
                              for c in columns] for task in tasks))
    lines.append("")
  if any(is_fraction(c) for columns, _ in groups for c in columns):
    lines.append("Accuracies and recalls in %.")
    lines.append("")
  for task, reason in (skipped or {}).items():
    lines.append(f"- skipped {task}: {reason}")
  return "\n".join(lines).rstrip() + "\n"


# The comparison's report.

def markdown_report(config, config_spec: str, methods: list[str], seeds: int, results: Results,
                    rows, chance: dict[str, float], tasks: list[str], command: str,
                    run_commands: Sequence[str], overrides: Sequence[str] = ()) -> str:
  """report.md. `rows`: summarise(results, tasks), the table shared with report.json;
  `chance`: {task: chance level}; `command`: the comparison's command line; `run_commands`:
  the command line of each run on its own."""
  lines = _intro(config, config_spec, methods, seeds, overrides) + [""]
  lines += _summary_table(methods, seeds, rows, chance)
  lines += ["", _NOTES.format(embed_dim=config.model.overrides.get("embed_dim", "?")), ""]
  lines += ["Per run (zero-shot top-1, %):", ""] + _per_run_table(methods, results, tasks)
  walls = [r["wall_seconds_last_session"] for runs in results.values() for r in runs]
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
      *run_commands,
      "```",
      "",
      "![training curves and per-task accuracy](report.png)",
      "",
  ]
  return "\n".join(lines)


def _intro(config, config_spec: str, methods: list[str], seeds: int,
           overrides: Sequence[str]) -> list[str]:
  """The title and the paragraph on seeds, budget and what the runs share."""
  beta_methods = ", ".join(m for m in methods if objectives.get(m).needs_beta)
  return [
      f"# {' vs '.join(m.upper() for m in methods)} on `{config_spec.partition(':')[0]}`",
      "",
      f"Mean ± standard deviation over **{seeds} seeds** (0..{seeds - 1}) per method; every run "
      f"has the same budget: **{config.total_steps} steps of batch {config.batch_size}** "
      f"({config.total_steps * config.batch_size:,} image-caption pairs), model "
      f"`{config.model.name}` with the config's overrides, learning rate "
      f"{config.optimizer.lr:g}, 1/τ = {config.inv_tau:g}"
      f"{' (learnt)' if config.get('learn_inv_tau') else ' (fixed)'}, β = {config.beta:g} ("
      + (beta_methods or "none of these") + " only). Only `method` and `seed` differ between "
      "runs." + (" Config overrides of every run: " + ", ".join(f"`{o}`" for o in overrides)
                 + "." if overrides else ""),
  ]


def _summary_table(methods: list[str], seeds: int, rows, chance: dict[str, float]) -> list[str]:
  """Metrics as rows, methods as columns (mean ± std; n where a run lacks the metric)."""
  body = []
  for key, label, cells in rows:
    best = None  # bold only where higher is plainly better: accuracies and recalls
    if len(cells) > 1 and is_fraction(key):
      means = {m: c[0] for m, c in cells.items()}
      best = max(means, key=means.get)
    row = [label]
    for method in methods:
      if method not in cells:
        row.append("")
        continue
      mean, std, n = cells[method]
      text = mean_std_cell(key, mean, std) + ("" if n == seeds else f" (n={n})")
      row.append(f"**{text}**" if method == best else text)
    task = key.partition("/")[0]
    zeroshot = key.endswith(f"/{ZEROSHOT_METRIC}") and task in chance
    body.append(row + [f"{100 * chance[task]:.1f}" if zeroshot else ""])
  return table(["metric", *methods, "chance"], body)


def _per_run_table(methods: list[str], results: Results, tasks: list[str]) -> list[str]:
  body = []
  for method in methods:
    for run in results[method]:
      values = [run["metrics"].get(f"{t}/{ZEROSHOT_METRIC}") for t in tasks]
      body.append([method, str(run["seed"])]
                  + ["" if v is None else f"{100 * v:.1f}" for v in values])
  return table(["method", "seed", *tasks], body)


def json_report(config_spec: str, methods: list[str], seeds: int, overrides: Sequence[str],
                rows, results: Results) -> dict[str, Any]:
  """report.json: the table's numbers {key: {method: {mean, std, n}}} and every run's result."""
  return {"methods": methods, "seeds": seeds, "config": config_spec,
          "overrides": list(overrides),
          "rows": {key: {m: dict(zip(("mean", "std", "n"), c)) for m, c in cells.items()}
                   for key, _, cells in rows},
          "runs": results}


def _version(package: str) -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(package)
  except Exception:  # pylint: disable=broad-except
    return "?"
