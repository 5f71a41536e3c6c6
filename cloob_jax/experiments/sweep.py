r"""A fair comparison of objectives: the same tuning budget for each, then fresh seeds.

  python -m cloob_jax.experiments.sweep --config=configs/demo.py \
      --methods=clip,cloob,infoloob,siglip --trials=4 --seeds=5 --budgets=0.5,1,2 \
      --workdir=DIR [--tuning_steps=N] [--grid=NAME] [--config.KEY=VALUE ...]

1. **Tuning.** Every method gets `--trials` runs, no more and no fewer, over its own knobs
   (`SPACES`: the learning rate for all; 1/tau fixed or learnt and its initial value; beta
   for the Hopfield objectives; SigLIP's initial bias). Trial 0 is the config's own setting,
   the others are drawn at random from the space (seeded by the method's name and the trial).
   Tuning runs use seeds 1000, 1001, ..., disjoint from the final seeds 0 .. seeds-1, and
   `--tuning_steps` steps (default: the config's own). `--grid=NAME` replaces the random
   draws with a named grid (`GRIDS`): trial k is its k-th setting, and every method's grid has
   the same number of settings (the number of trials).
2. **Selection on a validation split.** Tuning runs are evaluated on the config's evals with
   every eval data seed moved by `VALIDATION_SEED_OFFSET`: images and captions drawn from the
   same tasks, none of them the reported test examples. The score is the mean zero-shot
   top-1 over the config's zero-shot tasks; the best trial (ties: the lower trial) wins.
3. **Final runs.** Each method at its chosen setting trains `--seeds` fresh seeds at each
   budget (fractions of the config's steps), evaluated on the config's own (test) evals.

The config must accept `method=`, `seed=` and `steps=` args (configs/demo.py does) and have
evals whose data carry a `seed` (a generated world; a fixed dataset has no second split to
tune on). Every run lives in DIR/tune/<method>/trial<k> or DIR/final/<method>/steps<N>/seed<k>;
a finished run is reused and an interrupted one resumes (as `experiments.compare`), so the
same command continues a stopped sweep. The end writes DIR/report.{md,json,png}
(`experiments/study_report.py`).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Sequence

from absl import flags
import numpy as np

from cloob_jax import cli
from cloob_jax import config_lib
from cloob_jax import errors
from cloob_jax import objectives
from cloob_jax import paths
from cloob_jax.experiments import compare
from cloob_jax.experiments import study_report

# --config, --workdir, --methods and --seeds are experiments.compare's flags (one meaning in
# both binaries); the sweep's defaults for the last two are set in `parse_flags`.
_DEFAULT_METHODS = ["clip", "cloob", "infoloob", "siglip"]
_DEFAULT_SEEDS = 5
_TRIALS = flags.DEFINE_integer("trials", 4, "Tuning runs per method (the same for each).")
_BUDGETS = flags.DEFINE_list("budgets", ["0.5", "1", "2"],
                             "Final training budgets as fractions of the config's steps.")
_TUNING_STEPS = flags.DEFINE_integer("tuning_steps", 0,
                                     "Steps of a tuning run (0: the config's own).")
_GRID = flags.DEFINE_string("grid", None,
                            "Tune on a named grid instead of random draws (trial k: its k-th "
                            "setting; --trials: its size). Grids: width.")

TUNING_SEED0 = 1000  # tuning run k uses seed TUNING_SEED0 + k; final seeds are 0 .. seeds-1
VALIDATION_SEED_OFFSET = 10_000  # validation eval data: the test evals' seeds + this
_DATA_KEYS = ("data", "train_data", "test_data")  # eval entries' data specs


def _log_uniform(low: float, high: float) -> Callable[[np.random.Generator], float]:
  return lambda rng: float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _choice(*values) -> Callable[[np.random.Generator], Any]:
  return lambda rng: values[int(rng.integers(len(values)))]


# Each knob: (config key, sampler). A method's space is the shared knobs plus its own.
_SHARED = (("optimizer.lr", _log_uniform(2e-4, 3e-3)),
           ("learn_inv_tau", _choice(True, False)),
           ("inv_tau", _choice(10.0, 1 / 0.07, 30.0)))
_BETA = (("beta", _choice(4.0, 8.0, 14.3)),)
_BIAS = (("init_bias", _choice(-10.0, -5.0, 0.0)),)


def _width_grid(method: str) -> list[dict[str, Any]]:
  """Where does CLOOB win? Embedding width 64 (the demo's) and 256, each with 4 settings of
  the method's own knobs: CLOOB's beta in {2, 4, 8, 16} at 1/tau = 30 fixed; for CLIP and the
  others, lr in {1e-3, 2e-3} x 1/tau in {30 fixed, 1/0.07 learnt}."""
  widths = ("model.overrides.embed_dim", (64, 256))
  if objectives.get(method).needs_beta:
    own = [{"optimizer.lr": 1e-3, "inv_tau": 30.0, "learn_inv_tau": False, "beta": beta}
           for beta in (2.0, 4.0, 8.0, 16.0)]
  else:
    own = [{"optimizer.lr": lr, "inv_tau": inv_tau, "learn_inv_tau": learnt}
           for lr in (1e-3, 2e-3) for inv_tau, learnt in ((30.0, False), (1 / 0.07, True))]
  return [{widths[0]: width, **setting} for width in widths[1] for setting in own]


# Named tuning grids: name -> (method -> [settings]); every method gets as many settings.
GRIDS: dict[str, Callable[[str], list[dict[str, Any]]]] = {"width": _width_grid}


def space(method: str) -> tuple[tuple[str, Callable], ...]:
  """The knobs tuned for `method`: lr, 1/tau (learnt or not, its start), beta where the
  objective uses one, SigLIP's initial bias where it declares one."""
  objective = objectives.get(method)
  knobs = _SHARED + (_BETA if objective.needs_beta else ())
  if any(scalar.name == "bias" for scalar in objective.scalars):
    knobs += _BIAS
  return knobs


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _set(config, key: str, value) -> None:
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.unlocked():
    node[last] = value


def trial_settings(method: str, trial: int, default_config,
                   grid: str | None = None) -> dict[str, Any]:
  """Trial 0: the method's config's own values of its knobs (a knob the config lacks keeps
  the code's default); trial k > 0: a draw from the space, seeded by (method, k). With a
  `grid`: its k-th setting for `method`."""
  if grid is not None:
    return dict(GRIDS[grid](method)[trial])
  knobs = space(method)
  if trial == 0:
    return {key: _get(default_config, key) for key, _ in knobs if _has(default_config, key)}
  rng = np.random.default_rng([zlib.crc32(method.encode()), trial])
  return {key: sample(rng) for key, sample in knobs}


def _has(config, key: str) -> bool:
  try:
    _get(config, key)
    return True
  except (KeyError, AttributeError):
    return False


def validation_evals(config) -> None:
  """Moves every eval data seed (and an eval's own `seed`) by VALIDATION_SEED_OFFSET, in
  place; refuses evals without."""
  moved = 0
  for name, entry in config.evals.items():
    for key in _DATA_KEYS:
      if key in entry and "seed" in entry[key]:
        entry[key].seed = int(entry[key].seed) + VALIDATION_SEED_OFFSET
        moved += 1
    if "seed" in entry:  # an evaluator that renders its own data (the attribute probe)
      entry.seed = int(entry.seed) + VALIDATION_SEED_OFFSET
    del name
  if not moved or not compare.task_names(config):
    raise errors.UserError("the sweep selects on a validation split of generated eval data: "
                           "the config needs zero-shot evals whose data have a 'seed' "
                           "(e.g. configs/demo.py)")


def _split_spec(spec: str) -> tuple[str, int | None]:
  """'configs/demo.py:tiny=True,steps=4' -> ('configs/demo.py:tiny=True', 4)."""
  path, _, given = spec.partition(":")
  items, steps = [], None
  for item in (i for i in given.split(",") if i):
    key, _, value = item.partition("=")
    if key == "steps":
      steps = int(value)
    else:
      items.append(item)
  return path + (":" + ",".join(items) if items else ""), steps


@dataclasses.dataclass
class Run:
  """One training run of the sweep and where it lives."""
  phase: str  # 'tune' or 'final'
  method: str
  seed: int
  steps: int
  settings: dict[str, Any]
  directory: str
  config: Any = None
  trial: int | None = None
  result: dict[str, Any] | None = None


def _build(spec: str, run: Run, overrides: Sequence[str]):
  config = config_lib.load_config_file(spec, method=run.method, seed=run.seed, steps=run.steps)
  for item in overrides:
    config_lib.apply_override(config, item)
  for key, value in run.settings.items():
    _set(config, key, value)
  if run.phase == "tune":
    validation_evals(config)
  config_lib.validate(config)
  return config


def selection_score(result: dict[str, Any], tasks: Sequence[str]) -> float:
  """Mean zero-shot top-1 over `tasks` of a run's final metrics (validation for tuning runs)."""
  return float(np.mean([result["metrics"][f"{task}/top1"] for task in tasks]))


def _train(run: Run, spec: str, overrides: Sequence[str]) -> bool:
  run.config = run.config or _build(spec, run, overrides)
  compare.check_same_config(run.config, run.directory)
  reused = paths.exists(paths.join(run.directory, compare.DONE_FILE))
  label = (f"trial {run.trial}" if run.phase == "tune" else f"{run.steps} steps, seed {run.seed}")
  print(f"=== {run.phase} {run.method}, {label}: "
        f"{'finished before, reused' if reused else 'training'} ({run.directory})", flush=True)
  run.result = compare.train_one(run.config, run.directory)
  return run.result is not None


def sweep(config_spec: str, methods: list[str], trials: int, seeds: int,
          budgets: Sequence[float], workdir: str, tuning_steps: int = 0,
          command: str | None = None, overrides: Sequence[str] = (),
          grid: str | None = None) -> dict[str, Any] | None:
  """Tunes every method with `trials` runs (or on `grid`: one run per setting), trains `seeds`
  seeds per budget at each method's choice, writes the study report. Returns its summary, or
  None if a run was stopped."""
  if grid is not None:
    if grid not in GRIDS:
      raise errors.UserError(f"--grid={grid!r}: unknown grid; choose one of {sorted(GRIDS)}")
    sizes = {m: len(GRIDS[grid](m)) for m in methods if m in objectives.names()}
    if len(set(sizes.values())) > 1:
      raise errors.UserError(f"--grid={grid}: the methods' grids differ in size {sizes}: every "
                             "method gets the same number of tuning runs")
    trials = next(iter(sizes.values()), trials)
  if trials < 1 or seeds < 1:
    raise errors.UserError(f"--trials and --seeds must be at least 1, got {trials}, {seeds}")
  if not budgets or any(b <= 0 for b in budgets):
    raise errors.UserError(f"--budgets must be positive fractions, got {list(budgets)}")
  for method in methods:
    if method not in objectives.names():
      raise errors.UserError(f"unknown method {method!r}; choose from {objectives.names()}")
  spec, spec_steps = _split_spec(config_spec)
  default = config_lib.load_config_file(spec, method=methods[0], seed=0,
                                        **({"steps": spec_steps} if spec_steps else {}))
  base_steps = int(default.total_steps)
  tuning_steps = tuning_steps or base_steps
  steps_of = {b: max(1, int(round(b * base_steps))) for b in budgets}
  tasks = compare.task_names(default)

  own = {}  # each method's config as given (its trial 0)
  for m in methods:
    own[m] = config_lib.load_config_file(spec, method=m, seed=0)
    for item in overrides:
      config_lib.apply_override(own[m], item)
  tune = {m: [Run("tune", m, TUNING_SEED0 + k, tuning_steps,
                  trial_settings(m, k, own[m], grid),
                  paths.join(workdir, "tune", m, f"trial{k}"), trial=k)
              for k in range(trials)] for m in methods}
  for runs in tune.values():  # refuse bad input before the first run
    for run in runs:
      run.config = _build(spec, run, overrides)
      compare.check_same_config(run.config, run.directory)
  paths.makedirs(workdir, "--workdir")
  command = command or (
      f"python -m cloob_jax.experiments.sweep --config={config_spec} "
      f"--methods={','.join(methods)} " + ("" if grid else f"--trials={trials} ")
      + f"--seeds={seeds} "
      f"--budgets={','.join(f'{b:g}' for b in budgets)} --tuning_steps={tuning_steps} "
      f"--workdir={workdir}" + (f" --grid={grid}" if grid else "")
      + compare._override_args(overrides))  # pylint: disable=protected-access

  for k in range(trials):  # trial-major: a stopped sweep has tuned every method alike
    for m in methods:
      if not _train(tune[m][k], spec, overrides):
        return _stopped()
  chosen = {}
  for m in methods:
    scores = [selection_score(run.result, tasks) for run in tune[m]]
    best = int(np.argmax(scores))  # the first of equal scores
    chosen[m] = {"trial": best, "score": scores[best], "settings": tune[m][best].settings}

  order = sorted(budgets, key=lambda b: (b != 1, b))  # the 1x budget first
  final: dict[str, dict[int, list[Run]]] = {m: {steps_of[b]: [] for b in budgets}
                                            for m in methods}
  for b in order:
    for seed in range(seeds):
      for m in methods:
        steps = steps_of[b]
        run = Run("final", m, seed, steps, chosen[m]["settings"],
                  paths.join(workdir, "final", m, f"steps{steps}", f"seed{seed}"))
        if not _train(run, spec, overrides):
          return _stopped()
        final[m][steps].append(run)

  summary = study_report.write(
      workdir, command=command, config_spec=config_spec, methods=methods, tasks=tasks,
      base_steps=base_steps, tuning_steps=tuning_steps, budgets=steps_of,
      batch_size=int(default.batch_size),
      grid={m: [dict(trial=r.trial, seed=r.seed, settings=r.settings,
                     score=selection_score(r.result, tasks),
                     wall_seconds=r.result.get("wall_seconds_last_session"),
                     diagnostics={k: v for k, v in r.result["metrics"].items()
                                  if k.startswith(study_report.GRID_PREFIXES)})
                for r in tune[m]]
            for m in methods},
      chosen=chosen,
      final={m: {steps: [r.result for r in runs] for steps, runs in by_steps.items()}
             for m, by_steps in final.items()},
      chance=compare.chance_levels(default))
  return summary


def _stopped() -> None:
  print("Stopped before the sweep finished; re-run the same command to resume. No report "
        "written.", flush=True)
  return None


def main(argv):
  command = compare.start(argv, "cloob_jax.experiments.sweep")
  try:
    budgets = [float(b) for b in _BUDGETS.value]
  except ValueError as e:
    raise errors.UserError(f"--budgets={','.join(_BUDGETS.value)}: {e}") from None
  f = flags.FLAGS
  if _GRID.value and f["trials"].present:
    raise errors.UserError(f"--trials={_TRIALS.value} with --grid={_GRID.value}: a grid's size "
                           "is its number of trials; give one of them")
  sweep(f.config, f.methods, _TRIALS.value, f.seeds, budgets, f.workdir,
        tuning_steps=_TUNING_STEPS.value, command=command, overrides=compare.parse_overrides(),
        grid=_GRID.value)


def parse_flags(argv: list[str]) -> list[str]:
  """compare's parser (`--config.KEY=VALUE` taken out), with the sweep's defaults."""
  flags.FLAGS.set_default("methods", _DEFAULT_METHODS)
  flags.FLAGS.set_default("seeds", _DEFAULT_SEEDS)
  return compare.parse_flags(argv)


if __name__ == "__main__":
  # --config, --workdir, --methods and --seeds are compare's: listed by --help as the sweep's.
  cli.run(main, flags_parser=parse_flags, key_modules=(compare,))
