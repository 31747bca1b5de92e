"""The walkthrough notebook runs from top to bottom, as a user would run it."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "simulations" / "notebooks" / "non_iid_experiment.ipynb"


def test_the_non_iid_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run folders go here, not into the repository
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "federated: test macro-F1" in text and "pooled: test macro-F1" in text and "local only" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots were drawn
    assert any("# Run report" in o.get("data", {}).get("text/markdown", "") for o in outputs)
