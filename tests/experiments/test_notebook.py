"""The Colab notebook runs headless (nbclient, this interpreter's kernel) on a tiny stream."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_notebook_executes(monkeypatch):
    monkeypatch.setenv("LCACHE_NB_TOKENS", "128")
    monkeypatch.setenv("LCACHE_NB_CACHE", "16")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    NotebookClient(nb, timeout=85, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("| window |" in o.get("data", {}).get("text/markdown", "") for o in outputs)
