"""A dead or hung process of a 2-process run: the survivor exits in one line, in bounded time,
naming the step to resume from, and a re-run resumes there (`cloob_jax/peerwatch.py`).

Two processes with one CPU device each, gloo collectives, `configs/demo.py:tiny=True`, and
`--peer_timeout_s=10` (the default is 60) so that the hung case stays short.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

from cloob_jax import distributed
from cloob_jax import peerwatch
from cloob_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
CONFIG = f"configs/demo.py:tiny=True,evals=False,steps={STEPS},batch_size=16"
PEER_TIMEOUT = 10


def _process(i, workdir, port):
  cmd = [sys.executable, "-m", "cloob_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         "--config.log_every=1", "--config.checkpoint_every=4",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         "--num_cpu_devices=1", f"--peer_timeout_s={PEER_TIMEOUT}"]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _last_step(workdir):
  return max((row["step"] for row in workdir_lib.read_metrics(workdir)), default=0)


def _finished_checkpoint(workdir):
  """The newest checkpoint orbax finished (its temporary directories carry a suffix), or 0."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return 0
  return max((int(name) for name in os.listdir(directory) if name.isdigit()), default=0)


def _start_and_wait_for_step(workdir, step, timeout=300):
  """Until metrics reach `step` and a checkpoint is finished (the async save of step 4 may
  still be in flight at step 6 on a loaded machine: the survivor then rightly says "start
  over")."""
  port = 20000 + random.randrange(20000)
  procs = [_process(i, workdir, port) for i in range(2)]
  deadline = time.time() + timeout
  while _last_step(workdir) < step or not _finished_checkpoint(workdir):
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    assert time.time() < deadline, f"no step {step} within {timeout} s"
    time.sleep(0.05)
  return procs


def _survivor_exit(proc, timeout):
  """-> (seconds until `proc` exited, its stderr)."""
  t0 = time.time()
  _, err = proc.communicate(timeout=timeout)
  return time.time() - t0, err


def _one_line(err):
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def test_the_default_bound_is_at_most_60_seconds():
  assert distributed.PEER_TIMEOUT_S <= 60


def test_a_killed_process_ends_the_other_in_one_line_and_a_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  procs = _start_and_wait_for_step(workdir, 6)
  procs[1].kill()
  seconds, err = _survivor_exit(procs[0], timeout=PEER_TIMEOUT + 60)
  procs[1].communicate()
  print(f"survivor of SIGKILL exited after {seconds:.1f} s")
  assert procs[0].returncode == peerwatch.EXIT_CODE, err
  assert seconds <= PEER_TIMEOUT + 5, seconds
  line = _one_line(err)
  assert "another process stopped" in line or "process 1 gave no sign of life" in line, line
  step = int(re.search(r"resume from the checkpoint of step (\d+)", line).group(1))
  assert step >= 4 and step % 4 == 0

  port = 20000 + random.randrange(20000)
  procs = [_process(i, workdir, port) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out + err
    assert "Traceback" not in err, err
  assert f"Resumed from the checkpoint of step {step}" in outs[0][0]
  assert _last_step(workdir) == STEPS


def test_a_hung_process_ends_the_other_within_the_peer_timeout(tmp_path):
  workdir = str(tmp_path / "run")
  procs = _start_and_wait_for_step(workdir, 6)
  procs[1].send_signal(signal.SIGSTOP)  # alive, in no collective: what a stuck host looks like
  try:
    seconds, err = _survivor_exit(procs[0], timeout=PEER_TIMEOUT + 60)
  finally:
    procs[1].kill()
    procs[1].communicate()
  print(f"survivor of SIGSTOP exited after {seconds:.1f} s")
  assert procs[0].returncode == peerwatch.EXIT_CODE, err
  assert seconds <= PEER_TIMEOUT + 5, seconds
  line = _one_line(err)
  assert f"process 1 gave no sign of life for {PEER_TIMEOUT} s" in line, line
  assert re.search(r"resume from the checkpoint of step \d+", line), line
