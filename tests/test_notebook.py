"""The notebooks run top to bottom on the embedded model (real-model tests, a few minutes each)."""

from __future__ import annotations

import json
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


CHAIN_NOTEBOOK = NOTEBOOK.with_name("chain.ipynb")
CHAIN_RUN_DIR = NOTEBOOK.parents[1] / "runs" / "notebook_chain"


def test_chain_notebook_executes():
    shutil.rmtree(CHAIN_RUN_DIR, ignore_errors=True)
    nb = nbformat.read(CHAIN_NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(CHAIN_NOTEBOOK.parent)}}).execute()
    result = json.loads((CHAIN_RUN_DIR / "chain.json").read_text())
    assert [s["stage"] for s in result["stages"]] == ["base", "selfsft", "dpo", "grpo"]
    assert all(0.0 <= s["eval_reward"] <= 1.0 and 0.0 <= s["eval_reward_greedy"] <= 1.0 for s in result["stages"])
    for stage in ("selfsft", "dpo", "grpo"):
        assert (CHAIN_RUN_DIR / stage / "checkpoints" / "latest" / "selfsft.json").is_file()
    assert sum(result["pairs_per_iteration"].values()) >= 1
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| grpo |" in printed and "pairs" in printed
