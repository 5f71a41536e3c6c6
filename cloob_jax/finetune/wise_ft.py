"""WiSE-FT: evaluate θ_α = (1 - α) θ_zs + α θ_ft for a list of α; a table and a plot.

Writes, into the workdir, `wise_ft.json` ({'alphas', 'val_top1', 'best_alpha', ...}),
`wise_ft.md` (the table) and `wise_ft.png` (val top-1 against α).
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Sequence

from cloob_jax import paths
from cloob_jax.finetune import classifier

JSON_FILE = "wise_ft.json"
MARKDOWN_FILE = "wise_ft.md"
PLOT_FILE = "wise_ft.png"


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
  alphas = tuple(float(a) for a in alphas)
  if not alphas or any(not 0 <= a <= 1 for a in alphas):
    raise ValueError(f"config.wise_ft.alphas must be a non-empty list in [0, 1], got {alphas}")
  return alphas


def sweep(evaluate: Callable[[Any], dict[str, float]], zeroshot_tree, finetuned_tree,
          alphas: Sequence[float]) -> list[dict[str, float]]:
  """[{'alpha': α, **evaluate(θ_α)}] in the order of `alphas`."""
  rows = []
  for alpha in alphas:
    rows.append({"alpha": float(alpha),
                 **evaluate(classifier.interpolate(zeroshot_tree, finetuned_tree, alpha))})
  return rows


def summary(rows: Sequence[dict[str, float]], metric: str = "top1") -> dict[str, Any]:
  """The sweep's lists and its best α (highest `metric`; a tie goes to the smallest α, the
  model closest to zero-shot)."""
  best = max(rows, key=lambda r: (r[metric], -r["alpha"]))
  out = {"alphas": [r["alpha"] for r in rows], f"val_{metric}": [r[metric] for r in rows],
         "best_alpha": best["alpha"], f"best_val_{metric}": best[metric], "rows": list(rows)}
  by_alpha = {r["alpha"]: r for r in rows}
  if 0.0 in by_alpha:
    out[f"zeroshot_val_{metric}"] = by_alpha[0.0][metric]
  if 1.0 in by_alpha:
    out[f"finetuned_val_{metric}"] = by_alpha[1.0][metric]
  return out


def markdown(rows: Sequence[dict[str, float]], title: str) -> str:
  metrics = [k for k in rows[0] if k != "alpha"]
  best = summary(rows)["best_alpha"]
  lines = [f"## {title}", "", "| α | " + " | ".join(f"val {m} (%)" for m in metrics) + " |",
           "|---:|" + "---:|" * len(metrics)]
  for r in rows:
    note = {0.0: " (zero-shot)", 1.0: " (fine-tuned)"}.get(r["alpha"], "")
    cells = [f"{100 * r[m]:.2f}" + (" **best**" if m == "top1" and r["alpha"] == best else "")
             for m in metrics]
    lines.append(f"| {r['alpha']:g}{note} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_png(rows: Sequence[dict[str, float]], title: str) -> bytes:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  alphas = [r["alpha"] for r in rows]
  top1 = [100 * r["top1"] for r in rows]
  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
  ax.plot(alphas, top1, "o-", label="θ_α = (1-α) θ_zs + α θ_ft")
  best = max(range(len(rows)), key=lambda i: top1[i])
  ax.plot([alphas[best]], [top1[best]], "r*", markersize=12, label=f"best α = {alphas[best]:g}")
  ax.set_xlabel("α (0: zero-shot, 1: fine-tuned)")
  ax.set_ylabel("validation top-1 (%)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  return buffer.getvalue()


def write(workdir: str, rows: Sequence[dict[str, float]], title: str,
          extra: dict[str, Any] | None = None) -> list[str]:
  """Writes the JSON, markdown and PNG into `workdir`; returns their paths."""
  out = {**summary(rows), **(extra or {})}
  files = {JSON_FILE: (json.dumps(out, indent=1) + "\n").encode(),
           MARKDOWN_FILE: markdown(rows, title).encode(),
           PLOT_FILE: plot_png(rows, title.split(", from ")[0])}
  written = []
  for name, data in files.items():
    path = paths.join(workdir, name)
    paths.write_bytes(path, data)
    written.append(path)
  return written
