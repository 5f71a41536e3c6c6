"""notebooks/demo.ipynb runs top to bottom, headless, with a tiny budget, so it never rots."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("CLOOB_JAX_SKIP_INSTALL", "1")  # installed already; no network in tests
  monkeypatch.setenv("DEMO_STEPS", "4")
  monkeypatch.setenv("DEMO_TINY", "1")
  monkeypatch.setenv("DEMO_WORKERS", "1")  # as the full demo: a grain worker from a kernel
  monkeypatch.setenv("DEMO_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  path = os.path.join(REPO, "notebooks", "demo.ipynb")
  notebook = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors, errors
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "## Evaluation at step 4" in text and "| colour |" in text, text[-3000:]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) == 2  # training curves and the grid of zero-shot predictions
  assert os.path.exists(tmp_path / "run" / "checkpoints")
