"""A run's metrics: written while it runs (``metrics.jsonl``, Weights & Biases) and shown when it is done.

:class:`RunLog` appends one row per iteration to ``RUN/metrics.jsonl`` (the main process only) and, when asked,
to a wandb run under namespaced keys (``reward/eval``, ``loss/sft``, ``data/kept``…); :func:`read_metrics`
reads the file back, :func:`table` and :func:`plot` show it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from agilerl_selfsft.distributed import DataParallel

# metrics.jsonl keys under their wandb names; any other number goes under misc/
WANDB_NAMES = {
    "eval_reward": "reward/eval", "eval_reward_greedy": "reward/eval_greedy", "train_reward": "reward/train",
    "loss": "loss/sft", "kl": "loss/kl", "kept": "data/kept", "static": "data/static",
    "learned_static": "data/learned_static", "learned_self": "data/learned_self",
}


class RunLog:
    """The metrics of one run: every row goes to ``metrics.jsonl`` (and wandb), with the run's wall clock.

    Opening it rewrites ``metrics.jsonl`` with ``history`` only, so a resumed run drops the rows of an
    iteration that did not finish; the clock continues from the last row's ``wall_seconds``.

    :param run_dir: the run directory, defaults to None (nothing written)
    :param history: the rows of the iterations already done (a resumed run's), defaults to None
    :param dp: the launch's processes; only the main one writes, all keep the main one's clock
    :param wandb_run: a ``wandb`` run to log to, defaults to None
    """

    def __init__(
        self,
        run_dir: Path | None = None,
        history: list[dict[str, Any]] | None = None,
        dp: DataParallel | None = None,
        wandb_run: Any | None = None,
    ) -> None:
        self.run_dir, self.history = run_dir, list(history or [])
        self.dp, self.wandb_run = dp or DataParallel(), wandb_run
        if run_dir is not None:
            if self.dp.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                _write_lines(run_dir / "metrics.jsonl", self.history)
            self.dp.barrier()  # every rank has read the old metrics before they are rewritten
        self.start = time.perf_counter() - (self.history[-1]["wall_seconds"] if self.history else 0.0)

    def record(self, row: dict[str, Any]) -> None:
        """Stamp ``row`` with ``wall_seconds`` (the main process's clock) and append it everywhere."""
        row["wall_seconds"] = self.dp.broadcast(round(time.perf_counter() - self.start, 2))
        self.history.append(row)
        if self.run_dir is not None and self.dp.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row, allow_nan=False, default=_jsonable) + "\n")
        if self.wandb_run is not None:
            namespaced = {WANDB_NAMES.get(k, f"misc/{k}"): v for k, v in row.items() if isinstance(v, (int, float))}
            self.wandb_run.log(namespaced, step=row["iteration"])

    def close(self) -> None:
        """Finish the wandb run, if any."""
        if self.wandb_run is not None:
            self.wandb_run.finish()


def open_wandb(api_key: str | None = None, config: dict | None = None) -> Any:
    """A wandb run of project ``agilerl-selfsft`` (wandb is imported only here: it is optional)."""
    import wandb

    if api_key:
        wandb.login(key=api_key)
    return wandb.init(project="agilerl-selfsft", config=config or {})


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
    """Save the reward curves (held-out sampled and greedy, train) against iteration as a PNG, with held-out
    pass@k and maj@k (k > 1) beside them: self-training can raise the mean reward while pass@k falls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    its = [r["iteration"] for r in history]
    at_k = sorted({k for r in history for k in r if k.startswith(("eval_pass@", "eval_maj@")) and k[-2:] != "@1"})
    for key, label, style in [
        ("eval_reward", "held-out (sampled)", "o-"),
        ("eval_reward_greedy", "held-out (greedy)", "s--"),
        ("train_reward", "train (sampled)", "^:"),
        *[(key, f"held-out {key[5:]}", "d-.") for key in at_k],
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


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, allow_nan=False, default=_jsonable) + "\n" for row in rows))
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
