r"""Trains several objectives with several seeds under one budget, evaluates and reports them.

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

This module runs the runs; `report.py` summarises and writes the report, `plot.py` draws it.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any, Sequence

from absl import flags
from absl import logging

from cloob_jax import cli
from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import paths
from cloob_jax import workdir as workdir_lib
from cloob_jax.experiments import plot
from cloob_jax.experiments import report

_CONFIG = flags.DEFINE_string("config", None, "Config file, optionally with :args "
                              "(it must accept method= and seed= args).")
_METHODS = flags.DEFINE_list("methods", ["clip", "cloob"], "Objectives to compare.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per method: 0 .. seeds-1.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the runs and the report.")
flags.mark_flags_as_required(["config", "workdir"])
_OVERRIDE_PREFIX = "--config."  # --config.KEY=VALUE, taken out of argv before absl parses it
_overrides: list[str] = []

DONE_FILE = "done.json"


def run_dir(workdir: str, method: str, seed: int) -> str:
  return paths.join(workdir, method, f"seed{seed}")


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
  metrics = report.final_metrics(rows, config.total_steps)
  if "loss" not in metrics:
    return None  # stopped early (SIGTERM/SIGINT saved a checkpoint): not done, resume later
  result = {"method": config.method, "seed": config.seed, "total_steps": config.total_steps,
            "wall_seconds_last_session": time.time() - start, "metrics": metrics}
  # Atomic: a run is 'done' only once its results are complete.
  paths.write_text(done, json.dumps(result, indent=1))
  return result


def _override_args(overrides: Sequence[str]) -> str:
  """' --config.KEY=VALUE ...' for a shell command line ('' without overrides)."""
  return "".join(" " + shlex.quote(_OVERRIDE_PREFIX + item) for item in overrides)


def run_commands(config_spec: str, methods: list[str], seeds: int,
                 overrides: Sequence[str] = ()) -> list[str]:
  """The `cloob_jax.main` command line of each run on its own, the same training."""
  path, _, given = config_spec.partition(":")
  commands = []
  for method in methods:
    for seed in range(seeds):
      args = ",".join([a for a in given.split(",") if a] + [f"method={method}", f"seed={seed}"])
      commands.append(f"python -m cloob_jax.main --config={path}:{args} "
                      f"--workdir={run_dir('DIR', method, seed)}" + _override_args(overrides))
  return commands


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
  results: report.Results = {m: [] for m in methods}
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
  return write_reports(configs[(methods[0], 0)], config_spec, methods, seeds, workdir, results,
                       command, overrides)


def write_reports(config, config_spec: str, methods: list[str], seeds: int, workdir: str,
                  results: report.Results, command: str,
                  overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Writes workdir/report.{md,json,png} for the finished runs; returns report.json's dict."""
  tasks = task_names(config)
  chance = chance_levels(config)
  rows = report.summarise(results, tasks)
  commands = run_commands(config_spec, methods, seeds, overrides)
  text = report.markdown_report(config, config_spec, methods, seeds, results, rows, chance,
                                tasks, command, commands, overrides)
  paths.write_text(paths.join(workdir, "report.md"), text)
  summary = report.json_report(config_spec, methods, seeds, overrides, rows, results)
  paths.write_text(paths.join(workdir, "report.json"), json.dumps(summary, indent=1))
  logs = {m: [workdir_lib.read_metrics(run_dir(workdir, m, s)) for s in range(seeds)]
          for m in methods}
  plot.plot_report(paths.join(workdir, "report.png"), config, methods, tasks, seeds, results,
                   chance, logs)
  print(text, flush=True)
  print(f"Wrote {paths.join(workdir, 'report.md')}, {paths.join(workdir, 'report.json')} "
        f"and {paths.join(workdir, 'report.png')}", flush=True)
  return summary


def start(argv, module: str) -> str:
  """A driver binary's start: refuses stray arguments, quiets orbax/grain's INFO logs unless
  --verbosity is given, and returns the command line that re-runs it."""
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  return f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def main(argv):
  command = start(argv, "cloob_jax.experiments.compare")
  compare(_CONFIG.value, _METHODS.value, _SEEDS.value, _WORKDIR.value, command=command,
          overrides=parse_overrides())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, after taking `--config.KEY=VALUE` items out of argv (absl knows only
  `--config`, a plain string here: each run calls the config file with its own args)."""
  _overrides[:] = [a[len(_OVERRIDE_PREFIX):] for a in argv[1:] if a.startswith(_OVERRIDE_PREFIX)]
  return flags.FLAGS([a for a in argv if not a.startswith(_OVERRIDE_PREFIX)])


def parse_overrides() -> list[str]:
  """The 'KEY=VALUE' items of the `--config.KEY=VALUE` arguments `parse_flags` took out."""
  return list(_overrides)


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags)
