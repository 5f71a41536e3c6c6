"""The comparison's report.png: training-loss curves, collapse over training, per-task bars.

matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from cloob_jax import paths
from cloob_jax.experiments import report


def plot_report(path: str, config, methods: list[str], tasks: list[str], seeds: int,
                results: report.Results, chance: dict[str, float],
                logs: dict[str, list[list[dict[str, Any]]]]) -> None:
  """Writes the PNG to `path`. `logs`: {method: [each seed's metrics.jsonl rows]}; `results`
  and `chance` as for `report.markdown_report`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  fig, axes = plt.subplots(1, len(methods) + 2, figsize=(4.2 * (len(methods) + 2) + 2, 3.8),
                           gridspec_kw={"width_ratios": [1] * (len(methods) + 1) + [2.2]})
  for i, method in enumerate(methods):
    _loss_panel(axes[i], method, logs[method], colours[i])
  _collapse_panel(axes[len(methods)], methods, logs, colours)
  _accuracy_panel(axes[-1], config.total_steps, methods, tasks, seeds, results, chance, colours)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  paths.write_bytes(path, buffer.getvalue())
  plt.close(fig)


def _loss_panel(ax, method: str, logs: list[list[dict[str, Any]]], colour) -> None:
  """One method's training loss: the mean over seeds and their range."""
  found = report.seed_curves(logs)
  if found:
    steps, stacked = found
    ax.fill_between(steps, stacked.min(0), stacked.max(0), color=colour, alpha=0.25,
                    linewidth=0)
    ax.plot(steps, stacked.mean(0), color=colour, label=f"{method} (mean of {len(stacked)})")
  ax.set_title(f"{method}: training loss")
  ax.set_xlabel("step")
  ax.legend(loc="upper right", fontsize=8)
  ax.grid(alpha=0.3)


def _collapse_panel(ax, methods: list[str], logs, colours) -> None:
  """The mean cosine between distinct embeddings of a training batch (near 1: every image, or
  every caption, is embedded in the same direction)."""
  for i, method in enumerate(methods):
    for key, style, side in (("text_mean_cosine", "-", "text"), ("image_mean_cosine", "--",
                                                                   "image")):
      found = report.seed_curves(logs[method], key)
      if found:
        ax.plot(found[0], found[1].mean(0), style, color=colours[i], label=f"{method}, {side}")
  ax.set_title("mean cosine within a batch")
  ax.set_xlabel("step")
  ax.set_ylim(-0.05, 1.05)
  ax.legend(loc="lower right", fontsize=8)
  ax.grid(alpha=0.3)


def _accuracy_panel(ax, total_steps: int, methods: list[str], tasks: list[str], seeds: int,
                    results: report.Results, chance: dict[str, float], colours) -> None:
  """Final zero-shot top-1 per task and method (mean ± std over seeds), chance dashed."""
  width = 0.8 / len(methods)
  x = np.arange(len(tasks))
  for i, method in enumerate(methods):
    values = [[r["metrics"].get(f"{t}/{report.ZEROSHOT_METRIC}", np.nan)
               for r in results[method]] for t in tasks]
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
  ax.set_title(f"zero-shot accuracy after {total_steps} steps "
               f"(mean ± std, {seeds} seeds)")
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
