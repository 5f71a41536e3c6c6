"""The sweep's report (`experiments.sweep`): report.md, report.json and report.png.

Per task and method: mean ± std over the final seeds and a 95% Student-t interval for the
mean; which method is ahead and whether its interval overlaps another's; the whole tuning grid
with the validation scores and the chosen settings; learning curves over the budgets; the
time spent per method. It states what the numbers say and nothing they do not.
"""

from __future__ import annotations

import io
import json
import os
import platform
from typing import Any, Mapping, Sequence

import numpy as np

from cloob_jax import paths

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1 .. 30; beyond, the normal's.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# Analyses where lower is the paper's "better" (more uniform, better aligned).
_LOWER_IS_BETTER = ("uniformity", "ajne", "rayleigh", "alignment")
_PREFIXES = ("retrieval/", "embedding_analysis/", "attribute_probe/", "hopfield/")
# What the tuning grid's table shows beside each run's validation score: the Hopfield
# retrieval's statistics at the last step (objectives/diagnostics.py) and the attribute probes.
GRID_PREFIXES = ("hopfield/", "attribute_probe/")


def interval(values: Sequence[float]) -> dict[str, float]:
  """mean, std (n - 1), n and the 95% t interval [low, high] of the mean (n = 1: no width)."""
  x = np.asarray(values, np.float64)
  n = x.size
  mean = float(x.mean())
  std = float(x.std(ddof=1)) if n > 1 else 0.0
  t = _T975[n - 2] if 1 < n <= len(_T975) + 1 else 1.96
  half = t * std / np.sqrt(n) if n > 1 else 0.0
  return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def metric_keys(tasks: Sequence[str], results: Sequence[Mapping[str, Any]]) -> list[str]:
  """The zero-shot top-1 of each task, then every retrieval and analysis metric the runs
  logged, in a stable order."""
  keys = [f"{task}/top1" for task in tasks]
  found = set().union(*(r["metrics"] for r in results)) if results else set()
  return keys + sorted(k for k in found if k.startswith(_PREFIXES))


# Descriptions, not scores: no method is "ahead" on them (the retrieval's statistics).
_NO_VERDICT = ("hopfield/",)


def _lower_is_better(key: str) -> bool:
  return any(word in key for word in _LOWER_IS_BETTER)


def verdict(key: str, cells: Mapping[str, Mapping[str, float]]) -> str:
  """'M ahead; overlaps A, B' or 'M ahead, clear of the others' for one metric."""
  order = sorted(cells, key=lambda m: cells[m]["mean"], reverse=not _lower_is_better(key))
  best, rest = order[0], order[1:]
  overlap = [m for m in rest if cells[m]["high"] >= cells[best]["low"]
             and cells[m]["low"] <= cells[best]["high"]]
  if not rest:
    return best
  if cells[rest[0]]["mean"] == cells[best]["mean"]:
    return "tied"
  if overlap:
    return f"{best} ahead; 95% intervals overlap with {', '.join(overlap)}"
  return f"**{best}**, clear of the others"


def _fmt(key: str, c: Mapping[str, float]) -> str:
  scale = 100 if key.endswith(("top1", "top5")) or "recall@" in key else 1
  return (f"{scale * c['mean']:.1f} ± {scale * c['std']:.1f} "
          f"[{scale * c['low']:.1f}, {scale * c['high']:.1f}]" if scale == 100 else
          f"{c['mean']:.3g} ± {c['std']:.2g} [{c['low']:.3g}, {c['high']:.3g}]")


def _settings(settings: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in settings.items())


def _machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"jax {jax.__version__}, {jax.devices()[0].platform} backend")


def _grid_diagnostics(d: Mapping[str, float]) -> tuple[str, str, str]:
  """(patterns, cos to mean, attribute probes) cells of a tuning run's row ('—': not logged)."""
  def pair(name, fmt):
    values = [d.get(f"hopfield/{memory}/{name}") for memory in ("image_memory", "text_memory")]
    return "—" if None in values else " / ".join(format(v, fmt) for v in values)

  probes = [[v for k, v in d.items() if k.startswith(f"attribute_probe/{side}/")]
            for side in ("image", "text")]
  probe_cell = ("—" if not all(probes) else
                " / ".join(f"{100 * np.mean(v):.1f}" for v in probes))
  return pair("patterns", ".1f"), pair("cos_mean", ".2f"), probe_cell


def _seconds(results: Sequence[Mapping[str, Any]]) -> float:
  return float(sum(r.get("wall_seconds_last_session") or 0.0 for r in results))


def write(workdir: str, *, command: str, config_spec: str, methods: Sequence[str],
          tasks: Sequence[str], base_steps: int, tuning_steps: int,
          budgets: Mapping[float, int], batch_size: int,
          grid: Mapping[str, Sequence[Mapping[str, Any]]], chosen: Mapping[str, Any],
          final: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
          chance: Mapping[str, float]) -> dict[str, Any]:
  """Writes workdir/report.{md,json,png}; returns the JSON summary."""
  main_steps = budgets.get(1.0, max(budgets.values()))
  all_main = [r for m in methods for r in final[m][main_steps]]
  keys = metric_keys(tasks, all_main)
  # A metric only some methods log (the Hopfield retrieval's) gets cells for those methods.
  table = {key: {m: interval(values) for m in methods
                 for values in [[r["metrics"][key] for r in final[m][main_steps]
                                 if key in r["metrics"]]] if values}
           for key in keys}
  curves = {key: {m: {steps: interval([r["metrics"][key] for r in final[m][steps]])
                      for steps in sorted(final[m])} for m in methods}
            for key in keys[:len(tasks)]}
  seeds = min(len(final[m][main_steps]) for m in methods)
  cost = {m: {"tuning_runs": len(grid[m]), "tuning_steps": tuning_steps * len(grid[m]),
              "tuning_seconds": float(sum(g["wall_seconds"] or 0.0 for g in grid[m])),
              "final_runs": sum(len(v) for v in final[m].values()),
              "final_steps": sum(s * len(v) for s, v in final[m].items()),
              "final_seconds": sum(_seconds(v) for v in final[m].values())}
          for m in methods}

  out = io.StringIO()
  w = lambda line="": out.write(line + "\n")  # noqa: E731
  w("# Study: " + " vs ".join(methods) + " under one tuning budget")
  w()
  w(f"Config `{config_spec}`: {base_steps} steps of batch {batch_size} (the 1× budget). Each "
    f"method had **{len(grid[methods[0]])} tuning runs** of {tuning_steps} steps (seeds "
    f"{grid[methods[0]][0]['seed']}+), selected on a validation split (the evals' images and "
    f"captions drawn with other seeds) by mean zero-shot top-1; then **{seeds} fresh seeds** "
    f"(0–{seeds - 1}) per method at each budget, evaluated on the test evals.")
  w()
  w(f"Machine: {_machine()}.")
  w()
  w("Command (re-running it reuses finished runs and resumes interrupted ones):")
  w()
  w(f"    {command}")
  w()
  w(f"## Final results at {main_steps} steps")
  w()
  w("Mean ± std over seeds [95% t interval of the mean]; top-1 and recall in %.")
  w()
  w("| metric | " + " | ".join(methods) + " | verdict |")
  w("|---|" + "---|" * (len(methods) + 1))
  for key in keys:
    label = key.replace("/top1", " (top-1)")
    if key.split("/")[0] in chance:
      label += f", chance {100 * chance[key.split('/')[0]]:.1f}"
    cells = table[key]
    w(f"| {label} | " + " | ".join(_fmt(key, cells[m]) if m in cells else "—" for m in methods)
      + f" | {'—' if key.startswith(_NO_VERDICT) or len(cells) < 2 else verdict(key, cells)} |")
  w()
  w("Verdicts take higher as better, except for alignment and the uniformity statistics "
    "(uniformity, Ajne, Rayleigh: lower is better aligned or more uniform, as in the "
    "paper). Overlapping intervals mean the seeds do not separate the methods on that metric.")
  w()
  w("## Learning curves (zero-shot top-1 %, mean ± std over seeds)")
  w()
  steps_list = sorted(set(budgets.values()))
  w("| task | method | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
  w("|---|---|" + "---|" * len(steps_list))
  for key, by_method in curves.items():
    for m in methods:
      w(f"| {key.split('/')[0]} | {m} | " + " | ".join(
          f"{100 * by_method[m][s]['mean']:.1f} ± {100 * by_method[m][s]['std']:.1f}"
          for s in steps_list) + " |")
  w()
  w("## Tuning grid (validation mean zero-shot top-1 %)")
  w()
  w("Beside each run: its Hopfield retrieval at the last training step (effective stored "
    "patterns per query and the retrieval's cosine to the batch mean, image memory / text "
    "memory; — without a retrieval) and the attribute probes' mean test top-1 on image / "
    "text embeddings.")
  w()
  w("| method | trial | settings | validation | chosen | patterns | cos to mean | "
    "attribute probes |")
  w("|---|---|---|---|---|---|---|---|")
  for m in methods:
    for g in grid[m]:
      mark = "✓" if g["trial"] == chosen[m]["trial"] else ""
      w(f"| {m} | {g['trial']} | {_settings(g['settings'])} | {100 * g['score']:.1f} | {mark} | "
        + " | ".join(_grid_diagnostics(g.get("diagnostics", {}))) + " |")
  w()
  w("## Compute per method")
  w()
  w("| method | tuning runs | tuning steps | tuning s | final runs | final steps | final s |")
  w("|---|---|---|---|---|---|---|")
  for m in methods:
    c = cost[m]
    w(f"| {m} | {c['tuning_runs']} | {c['tuning_steps']} | {c['tuning_seconds']:.0f} | "
      f"{c['final_runs']} | {c['final_steps']} | {c['final_seconds']:.0f} |")
  w()
  w("Runs and steps are equal across methods by construction; seconds are each run's wall "
    "time in the session that finished it.")
  report = out.getvalue()

  summary = {"command": command, "config": config_spec, "methods": list(methods),
             "base_steps": base_steps, "tuning_steps": tuning_steps,
             "budgets": {f"{b:g}": s for b, s in budgets.items()}, "seeds": seeds,
             "table": table, "curves": {k: {m: {str(s): c for s, c in v.items()}
                                            for m, v in by_m.items()}
                                        for k, by_m in curves.items()},
             "grid": grid, "chosen": chosen, "cost": cost,
             "final": {m: {str(s): list(v) for s, v in by_s.items()} for m, by_s in final.items()}}
  paths.write_text(paths.join(workdir, "report.md"), report)
  paths.write_text(paths.join(workdir, "report.json"), json.dumps(summary, indent=1))
  _plot(paths.join(workdir, "report.png"), methods, curves, chance)
  print(report, flush=True)
  print(f"Wrote {workdir}/report.md, report.json and report.png", flush=True)
  return summary


def _plot(path: str, methods, curves, chance) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = list(curves)
  cols = min(3, len(tasks))
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, key in zip(axes.flat, tasks):
    for m in methods:
      steps = sorted(curves[key][m])
      mean = np.array([curves[key][m][s]["mean"] for s in steps]) * 100
      low = np.array([curves[key][m][s]["low"] for s in steps]) * 100
      high = np.array([curves[key][m][s]["high"] for s in steps]) * 100
      ax.errorbar(steps, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=m)
    task = key.split("/")[0]
    if task in chance:
      ax.axhline(100 * chance[task], color="grey", lw=0.8, ls="--")
    ax.set_title(f"{task}: zero-shot top-1 %")
    ax.set_xlabel("training steps")
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  paths.write_bytes(path, buffer.getvalue())
