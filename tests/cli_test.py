"""The binaries as a newcomer meets them: --help, --print_config, and bad paths refused in one
line before anything is written. Nothing here trains; each case is one short process."""

import json
import os
import re
import subprocess
import sys

import pytest

from cloob_jax import paths
from cloob_jax.data import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "configs/demo.py:tiny=True,evals=False"


def _run(*args, timeout=300):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def _one_line_error(code, stderr, *words):
  lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert code == 2, stderr
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  for word in words:
    assert word in lines[0], lines[0]
  return lines[0]


def _tree(root):
  """Every path under `root`, with a file's size: what a refused command must leave alone."""
  found = {}
  for directory, dirs, files in os.walk(root):
    for name in dirs + files:
      p = os.path.join(directory, name)
      found[os.path.relpath(p, root)] = None if os.path.isdir(p) else os.path.getsize(p)
  return found


# --- --help ---------------------------------------------------------------------------------

# (binary, the usage lines its --help prints, flags it lists)
HELP = [
    (["cloob_jax.main"],
     ["python -m cloob_jax.main --config=configs/NAME.py[:ARGS] --workdir=DIR"],
     ["--config", "--workdir", "--print_config", "--restart_from_scratch", "--traceback",
      "--coordinator_address", "--num_processes"]),
    (["cloob_jax.eval"], ["python -m cloob_jax.eval --config=configs/eval/synthetic.py"],
     ["--config", "--workdir", "--checkpoint", "--output", "--step", "--traceback",
      "--coordinator_address"]),
    (["cloob_jax.export"],
     ["python -m cloob_jax.export --workdir=runs/demo --format=params --output=demo.npz",
      "--format=openai \\\n      --output=rn50.pt [--overwrite]"],
     ["--workdir", "--step", "--checkpoint", "--model", "--format", "--output", "--overwrite",
      "--allow_torchscript", "--traceback"]),
    (["cloob_jax.finetune"], ["python -m cloob_jax.finetune --config=configs/finetune/"],
     ["--config", "--workdir", "--traceback", "--coordinator_address"]),
    (["cloob_jax.experiments.compare"],
     ["--methods=clip,cloob \\\n      --seeds=3 --workdir=DIR [--config.KEY=VALUE ...]"],
     ["--config", "--methods", "--seeds", "--workdir", "--traceback"]),
    (["cloob_jax.experiments.sweep"],
     ["python -m cloob_jax.experiments.sweep --config=configs/demo.py \\\n"
      "      --methods=clip,cloob,infoloob,siglip --trials=4 --seeds=5 --budgets=0.5,1,2 \\\n"
      "      --workdir=DIR"],
     ["--config", "--methods", "--seeds", "--workdir", "--trials", "--budgets",
      "--tuning_steps", "--grid", "--traceback", "(default: 'clip,cloob,infoloob,siglip')",
      "(default: '5')"]),
    (["cloob_jax.data.convert"],
     ["python -m cloob_jax.data.convert csv CAPTIONS.tsv OUT_DIR --image-root=DIR \\\n"
      "      [--image-column=filepath"],
     ["{webdataset,csv}"]),
    (["cloob_jax.data.convert", "csv"], ["usage: python -m cloob_jax.data.convert csv"],
     ["--image-root", "--image-column", "--caption-column", "--separator", "--workers",
      "--traceback"]),
    (["cloob_jax.data.convert", "webdataset"],
     ["usage: python -m cloob_jax.data.convert webdataset"],
     ["--workers", "--max-pixels", "--traceback"]),
]


@pytest.mark.parametrize("binary,usage,flags", HELP, ids=[" ".join(b) for b, _, _ in HELP])
def test_help_shows_the_binarys_usage_and_own_flags_and_exits_0(binary, usage, flags):
  code, out, err = _run(*binary, "--help")
  assert code == 0, out + err
  for text in usage:
    assert text in out, f"{text!r} not in:\n{out}"
  for text in flags:  # a bool flag is listed as --[no]NAME
    assert text in out.replace("--[no]", "--"), f"{text!r} not in:\n{out}"
  # A backslash-newline read as a line continuation glues two usage lines into one.
  head = out.split("\nflags:\n")[0]
  assert not re.search(r"\S {4,}--\w", head), head


def test_tpu_pod_help_exits_0_with_the_usage():
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "--help"],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  for subcommand in ("setup", "run", "logs", "stop"):
    assert re.search(rf"launch/tpu_pod.sh \[--dry-run\] (\[--no-check\] )?{subcommand} ",
                     proc.stdout), proc.stdout
  assert "REMOTE_PYTHON" in proc.stdout and not proc.stderr


# --- --print_config -------------------------------------------------------------------------


def test_print_config_shows_the_resolved_config_and_writes_nothing(tmp_path):
  code, out, err = _run("cloob_jax.main", f"--config={DEMO},method=clip",
                        "--config.total_steps=7", "--config.data.caption_mention.colour=0.5",
                        "--print_config", f"--workdir={tmp_path}/w")
  assert code == 0, err
  config = json.loads(out)
  assert config["method"] == "clip" and config["total_steps"] == 7
  assert config["data"]["caption_mention"]["colour"] == 0.5
  assert os.listdir(tmp_path) == []
  code, out, err = _run("cloob_jax.main", f"--config={DEMO}", "--print_config")  # no --workdir
  assert code == 0 and json.loads(out)["method"] == "cloob", err
  code, _, err = _run("cloob_jax.main", f"--config={DEMO}")
  _one_line_error(code, err, "--workdir is required", "--print_config")


# --- paths that are files -------------------------------------------------------------------


@pytest.mark.parametrize("args,words", [
    (["cloob_jax.main", f"--config={DEMO}", "--workdir={file}"],
     ["--workdir='{file}' is a file, not a folder"]),
    (["cloob_jax.main", f"--config={DEMO}", "--workdir={file}/run"],
     ["--workdir='{file}/run'", "{file} is a file"]),
    (["cloob_jax.experiments.compare", "--config=configs/demo.py", "--workdir={file}"],
     ["--workdir='{file}' is a file"]),
    (["cloob_jax.experiments.sweep", "--config=configs/demo.py", "--workdir={file}"],
     ["--workdir='{file}' is a file"]),
    (["cloob_jax.finetune", "--config=configs/finetune/synthetic.py:workdir={tmp}/none",
      "--workdir={file}"], ["--workdir='{file}' is a file"]),
    (["cloob_jax.export", "--checkpoint={tmp}/none.safetensors", "--model=ViT-tiny",
      "--format=open_clip", "--output={file}/out"], ["--output='{file}/out'", "is a file"]),
    (["cloob_jax.export", "--checkpoint={tmp}/none.safetensors", "--model=ViT-tiny",
      "--format=params", "--output={file}/out.npz"], ["{file} is a file"]),
    (["cloob_jax.data.convert", "webdataset", "{tmp}/x.tar", "{file}"],
     ["OUT_DIR='{file}' is a file"]),
    (["cloob_jax.data.convert", "csv", "{tmp}/c.tsv", "{file}", "--image-root={tmp}"],
     ["OUT_DIR='{file}' is a file"]),
], ids=["main", "main below a file", "compare", "sweep", "finetune", "export open_clip",
        "export params", "convert webdataset", "convert csv"])
def test_a_file_where_a_folder_goes_is_one_line_and_nothing_is_written(tmp_path, args, words):
  file = tmp_path / "notes.txt"
  file.write_text("not a folder\n")
  (tmp_path / "c.tsv").write_text("filepath\ttitle\nnotes.txt\ta note\n")
  fill = lambda s: s.replace("{file}", str(file)).replace("{tmp}", str(tmp_path))
  before = _tree(tmp_path)
  code, _, err = _run(*map(fill, args))
  _one_line_error(code, err, *map(fill, words))
  assert _tree(tmp_path) == before


def test_check_not_a_file():
  here = os.path.abspath(__file__)
  for bad in (here, os.path.join(here, "a", "b")):
    with pytest.raises(paths.PathError, match="is a file, not a folder"):
      paths.check_not_a_file(bad, "--workdir")
  paths.check_not_a_file(os.path.dirname(here), "--workdir")
  paths.check_not_a_file(os.path.join(os.path.dirname(here), "no", "such", "dir"))
  paths.check_not_a_file("gs://bucket/run")  # a URL: nothing to look at locally


# --- inputs that cannot be read -------------------------------------------------------------


def test_a_conversion_whose_inputs_all_fail_to_open_writes_nothing(tmp_path):
  out = tmp_path / "out"
  code, _, err = _run("cloob_jax.data.convert", "webdataset", f"{tmp_path}/none/{{0..3}}.tar",
                      str(out), "--no-progress")
  _one_line_error(code, err, "none of the 4 inputs can be opened",
                  f"{tmp_path}/none/0.tar: no such file or directory", "nothing was written")
  assert not out.exists()

  (tmp_path / "images").mkdir()
  (tmp_path / "c.tsv").write_text("filepath\ttitle\na.jpg\ta cat\nb.jpg\ta dog\n")
  before = _tree(tmp_path)
  for root, column, words in [
      ("images", "filepath", ["none of the first 2 images exists", "'a.jpg'"]),
      ("no_such_folder", "filepath", ["--image-root=", "is not a folder"]),
      ("images", "path", ["no column 'path'"])]:
    code, _, err = _run("cloob_jax.data.convert", "csv", f"{tmp_path}/c.tsv", str(out),
                        f"--image-root={tmp_path}/{root}", f"--image-column={column}",
                        "--no-progress")
    _one_line_error(code, err, *words)
    assert _tree(tmp_path) == before


def test_training_from_a_folder_that_is_not_converted_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  code, _, err = _run("cloob_jax.main", "--config=configs/cc3m.py:data_dir=/nonexistent",
                      f"--workdir={workdir}")
  _one_line_error(code, err, "config.data.data_dir='/nonexistent' does not exist",
                  "python -m cloob_jax.data.convert")
  assert not workdir.exists()


def test_check_data_dir_reads_the_manifest(tmp_path):
  def manifest(**fields):
    records.write_manifest(str(tmp_path), {"format": records.FORMAT, "complete": True,
                                           "num_records": 3, "shards": [], **fields})
  with pytest.raises(paths.PathError, match="has no manifest.json.*cloob_jax.data.convert"):
    records.check_data_dir(str(tmp_path))
  manifest(complete=False)
  with pytest.raises(paths.PathError, match="did not finish; re-run"):
    records.check_data_dir(str(tmp_path))
  manifest(num_records=0)
  with pytest.raises(paths.PathError, match="holds no records"):
    records.check_data_dir(str(tmp_path))
  manifest(format="other/1")
  with pytest.raises(paths.PathError, match="has the format 'other/1'"):
    records.check_data_dir(str(tmp_path))
  manifest()
  assert records.check_data_dir(str(tmp_path)) == str(tmp_path)


def test_bench_help_lists_the_subcommands_and_exits_0():
  code, out, err = _run("cloob_jax.bench", "--help")
  assert code == 0 and not err.strip(), out + err
  for name in ("compile", "data", "levers", "tokenizer", "train"):
    assert re.search(rf"^  {name} +\S", out, re.M), out
  code, out, err = _run("cloob_jax.bench", "nonesuch")
  assert code == 2 and "unknown subcommand 'nonesuch'" in err, out + err
