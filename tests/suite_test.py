"""The test suite's own machinery: the serial group stays on one pytest-xdist worker, the
compatibility subset names real tests, and CI runs the README's test command."""

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_serial_tests_run_on_one_worker(tmp_path):
  pytest.importorskip("xdist")
  folder = tmp_path / "tests"
  folder.mkdir()
  shutil.copy(os.path.join(REPO, "tests", "conftest.py"), folder / "conftest.py")
  (tmp_path / "pytest.ini").write_text("[pytest]\npython_files = *_test.py\n")  # the rootdir
  body = ("import os, time\n"
          "import pytest\n"
          "@pytest.mark.parametrize('i', range(6))\n"
          "def test_{name}(i):\n"
          "  time.sleep(0.2)\n"
          "  with open(os.path.join(os.environ['WHERE'], '{name}%d' % i), 'w') as f:\n"
          "    f.write(os.environ['PYTEST_XDIST_WORKER'])\n")
  (folder / "dead_host_test.py").write_text(body.format(name="serial"))
  (folder / "other_test.py").write_text(body.format(name="other"))
  where = tmp_path / "where"
  where.mkdir()
  env = dict(os.environ, WHERE=str(where))
  env.pop("PYTEST_XDIST_WORKER", None)
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                         "tests"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  workers = {name: (where / name).read_text() for name in os.listdir(where)}
  assert len(workers) == 12, workers
  assert len({w for n, w in workers.items() if n.startswith("serial")}) == 1, workers
  assert set(workers.values()) <= {"gw0", "gw1"}, workers


def test_every_compat_entry_names_collected_tests(request):
  import conftest  # pylint: disable=g-import-not-at-top
  ids = [item.nodeid.split("@")[0] for item in request.session.items]
  if len({i.split("::")[0] for i in ids}) < 10:
    pytest.skip("run with the whole suite")
  for entry in conftest.COMPAT + conftest.SERIAL + conftest.WHOLE_FILES + conftest.FIRST:
    assert any(conftest.matches(i, (entry,)) for i in ids), f"{entry} names no test"


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  commands = re.findall(r"^python3? -m venv \.venv && \. \.venv/bin/activate && (.*)$", readme,
                        re.MULTILINE)
  assert len(commands) == 2, commands
  tests = commands[1]
  assert tests.startswith("pip install -q -r requirements-test.txt -e . && python -m pytest"), tests
  assert "-n 2 --dist loadgroup" in tests, tests  # both cores, the serial group on one
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read()
  # .ci/run takes the command from the README itself, so the two cannot drift apart.
  pattern = re.search(r"grep -m1 -o '([^']*)' README.md", ci).group(1)
  assert re.search(pattern, readme).group(0) == tests
