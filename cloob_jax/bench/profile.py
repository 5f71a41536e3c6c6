"""Per-op time of a compiled step, from a `jax.profiler` trace: `bench train --profile=N`.

The trace's events are matched to the compiled module's HLO instructions by name, so only
XLA's own ops are counted (not the Python, runtime or thread-pool events around them), on
any backend: on XLA:CPU each op runs on one of the runtime's threads, on a GPU in a stream.
Control flow (`while`, `conditional`, `call`) is left out: its event spans the ops inside it,
which are counted themselves. Ops are grouped by name without their numeric suffix
(`ynn_fusion.93` -> `ynn_fusion`), which is XLA's name for the kind of op or fusion.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time
from typing import Any, Callable

_CONTROL_FLOW = frozenset({"while", "conditional", "call"})
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"([a-z][a-z0-9\-]*)\(")


def hlo_ops(hlo_text: str) -> dict[str, str]:
  """{instruction name: opcode} of every instruction of an HLO module's text."""
  ops = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      opcode = _OPCODE.search(m.group(2))
      if opcode:
        ops[m.group(1)] = opcode.group(1)
  return ops


def kind(name: str) -> str:
  """An op's kind: its name without XLA's numeric suffix."""
  return re.sub(r"(\.\d+)+$", "", name)


def _trace(run: Callable[[], Any], steps: int, directory: str) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(run())  # compiled and warm before the trace starts
  with jax.profiler.trace(directory):
    start = time.perf_counter()
    out = None
    for _ in range(steps):
      out = run()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def op_profile(run: Callable[[], Any], hlo_text: str, steps: int = 3,
               top: int = 12) -> dict[str, Any]:
  """Traces `steps` calls of `run` (a compiled step whose module is `hlo_text`).

  Returns:
    {'steps', 'wall_s' (per step), 'op_s' (per step, all threads or streams together),
     'lanes' (threads or streams that ran ops), 'busy' (op_s / (wall_s * lanes)),
     'kinds': [{'kind', 'count', 'op_s', 'share'}, ...] the `top` kinds by time per step}.
  """
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  ops = {n: o for n, o in hlo_ops(hlo_text).items() if o not in _CONTROL_FLOW}
  with tempfile.TemporaryDirectory() as directory:
    wall = _trace(run, steps, directory)
    files = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    if not files:
      raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {directory}")
    data = ProfileData.from_file(files[0])
    seconds, counts, lanes = collections.Counter(), collections.Counter(), set()
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          if event.name in ops:
            k = kind(event.name)
            seconds[k] += event.duration_ns * 1e-9
            counts[k] += 1
            lanes.add((plane.name, line.name))
  total = sum(seconds.values())
  if not total:
    raise RuntimeError("the trace holds no event of the compiled module's ops")
  return {
      "steps": steps, "wall_s": wall / steps, "op_s": total / steps, "lanes": len(lanes),
      "busy": total / (wall * len(lanes)),
      "kinds": [{"kind": k, "count": counts[k] / steps, "op_s": s / steps, "share": s / total}
                for k, s in seconds.most_common(top)]}


def print_profile(profile: dict[str, Any]) -> None:
  print(f"  profile of {profile['steps']} steps (per step): ops {profile['op_s'] * 1e3:.1f} ms "
        f"on {profile['lanes']} thread(s)/stream(s), wall {profile['wall_s'] * 1e3:.1f} ms "
        f"= {100 * profile['busy']:.0f}% busy; the op kinds taking the most time:")
  for k in profile["kinds"]:
    print(f"    {k['op_s'] * 1e3:9.2f} ms {100 * k['share']:5.1f}%  {k['count']:6.1f}x  {k['kind']}")
