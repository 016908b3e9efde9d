"""The quickstart notebook runs top to bottom on the embedded model (a real-model test, a few minutes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from agilerl_selfsft.report import read_metrics

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"
RUN_DIR = NOTEBOOK.parents[1] / "runs" / "notebook"  # where the notebook writes its run


def test_quickstart_notebook_executes():
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    rows = read_metrics(RUN_DIR)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(0.0 <= r["eval_reward"] <= 1.0 for r in rows)
    assert (RUN_DIR / "checkpoints" / "latest" / "actor" / "adapter_model.safetensors").is_file()
    assert (RUN_DIR / "reward_curve.png").is_file()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "eval_reward_greedy" in printed  # the results table was shown
