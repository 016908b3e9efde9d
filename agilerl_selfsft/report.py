"""What a finished run shows: a table of its iterations and a reward-curve PNG, from ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a run directory or the file itself)."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(history: list[dict[str, Any]], fmt: str = "github") -> str:
    """A Markdown table: iteration, held-out reward (sampled, greedy), train reward, kept, loss, time."""
    cols = ["iteration", "eval_reward", "eval_reward_greedy", "train_reward", "kept", "loss", "wall_seconds"]
    rows = [[row.get(c) for c in cols] for row in history]
    return tabulate(rows, headers=cols, tablefmt=fmt, floatfmt=".3f", missingval="-")


def plot(history: list[dict[str, Any]], path: str | Path, title: str = "SelfSFT: held-out reward") -> Path:
    """Save the reward curves (held-out sampled and greedy, train) against iteration as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    its = [r["iteration"] for r in history]
    for key, label, style in [
        ("eval_reward", "held-out (sampled)", "o-"),
        ("eval_reward_greedy", "held-out (greedy)", "s--"),
        ("train_reward", "train (sampled)", "^:"),
    ]:
        points = [(i, r[key]) for i, r in zip(its, history, strict=True) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean reward")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(its)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
