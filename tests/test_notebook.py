"""The notebooks run top to bottom on the embedded model (real-model tests, a few minutes each).

Each runs from a copy in a temporary folder laid out like the repository (``notebooks/`` beside a link to
``benchmarks/``), so the runs it writes to ``../runs/`` land there, not in the repository.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from agilerl_selfsft.training.report import read_metrics

REPO = Path(__file__).resolve().parents[1]


def execute(name: str, root: Path, timeout: int):
    """Run ``notebooks/<name>`` from a copy under ``root``; the executed notebook and its run folder root."""
    (root / "notebooks").mkdir()
    (root / "benchmarks").symlink_to(REPO / "benchmarks", target_is_directory=True)
    copy = root / "notebooks" / name
    shutil.copyfile(REPO / "notebooks" / name, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(copy.parent)}}).execute()
    return nb, root / "runs"


def printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_quickstart_notebook_executes(tmp_path):
    nb, runs = execute("quickstart.ipynb", tmp_path, timeout=900)
    run_dir = runs / "notebook"
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(0.0 <= r["eval_reward"] <= 1.0 for r in rows)
    assert (run_dir / "checkpoints" / "latest" / "actor" / "adapter_model.safetensors").is_file()
    assert (run_dir / "reward_curve.png").is_file()
    assert "eval_reward_greedy" in printed(nb)  # the results table was shown


def test_chain_notebook_executes(tmp_path):
    nb, runs = execute("chain.ipynb", tmp_path, timeout=600)
    run_dir = runs / "notebook_chain"
    result = json.loads((run_dir / "chain.json").read_text())
    assert [s["stage"] for s in result["stages"]] == ["base", "selfsft", "dpo", "grpo"]
    assert all(0.0 <= s["eval_reward"] <= 1.0 and 0.0 <= s["eval_reward_greedy"] <= 1.0 for s in result["stages"])
    for stage in ("selfsft", "dpo", "grpo"):
        assert (run_dir / stage / "checkpoints" / "latest" / "selfsft.json").is_file()
    assert sum(result["pairs_per_iteration"].values()) >= 1
    assert "| grpo |" in printed(nb) and "pairs" in printed(nb)
