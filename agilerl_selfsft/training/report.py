"""A run's metrics: written while it runs (``metrics.jsonl``, Weights & Biases, TensorBoard) and shown when it is done.

:class:`RunLog` appends one row per iteration to ``RUN/metrics.jsonl`` (the main process only) and, when asked,
to a wandb run and to TensorBoard under namespaced keys (``reward/eval``, ``loss/sft``, ``data/kept``…), and the
iteration's samples to ``RUN/samples/`` (:mod:`~agilerl_selfsft.training.sample_log`) and a wandb table;
:func:`read_metrics` reads the file back, :func:`table` and :func:`plot` show it; :func:`visible_logs` shows
the stage log lines of a run started from Python.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate
from tqdm.contrib.logging import logging_redirect_tqdm

from agilerl_selfsft.distributed import DataParallel
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.training.sample_log import prune_samples, samples_table, write_samples

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
    :param tensorboard: also write every number as a TensorBoard scalar to ``run_dir/tensorboard`` (with
        ``torch.utils.tensorboard``; it needs the ``tensorboard`` package and a ``run_dir``), defaults to False
    :raises SelfSFTError: for ``tensorboard`` without the package or without a run directory
    """

    def __init__(
        self,
        run_dir: Path | None = None,
        history: list[dict[str, Any]] | None = None,
        dp: DataParallel | None = None,
        wandb_run: Any | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.run_dir, self.history = run_dir, list(history or [])
        self.dp, self.wandb_run, self.tensorboard = dp or DataParallel(), wandb_run, None
        if tensorboard:
            self.tensorboard = _tensorboard_writer(run_dir) if self.dp.is_main else None
        if run_dir is not None:
            if self.dp.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                _write_lines(run_dir / "metrics.jsonl", self.history)
                prune_samples(run_dir, self.history[-1]["iteration"] if self.history else -1)
            self.dp.barrier()  # every rank has read the old metrics before they are rewritten
        self.start = time.perf_counter() - (self.history[-1]["wall_seconds"] if self.history else 0.0)

    def record(self, row: dict[str, Any]) -> None:
        """Stamp ``row`` with ``wall_seconds`` (the main process's clock) and append it everywhere."""
        row["wall_seconds"] = self.dp.broadcast(round(time.perf_counter() - self.start, 2))
        self.history.append(row)
        if self.run_dir is not None and self.dp.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row, allow_nan=False, default=_jsonable) + "\n")
        namespaced = {WANDB_NAMES.get(k, f"misc/{k}"): v for k, v in row.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb_run is not None:
            self.wandb_run.log(namespaced, step=row["iteration"])
        if self.tensorboard is not None:
            for key, value in namespaced.items():
                self.tensorboard.add_scalar(key, value, row["iteration"])
            self.tensorboard.flush()

    def record_samples(
        self, iteration: int, rows: list[dict[str, Any]], per_iteration: int | None = 512, seed: int = 0
    ) -> None:
        """Write an iteration's sample rows (:func:`~agilerl_selfsft.training.sample_log.write_samples`) and
        log them as a wandb table (``samples/completions``); the main process only."""
        if not self.dp.is_main:
            return
        if self.run_dir is not None:
            write_samples(self.run_dir, iteration, rows, per_iteration, seed)
        if self.wandb_run is not None and rows:
            self.wandb_run.log({"samples/completions": samples_table(rows)}, step=iteration)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool = False) -> None:
        """Finish the wandb run (as failed, exit code 1, when ``failed``) and close the TensorBoard writer, if any."""
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else None)
        if self.tensorboard is not None:
            self.tensorboard.close()


class StageClock:
    """Seconds an agent's iteration spent in each stage, as ``seconds_<stage>`` keys of its metrics row."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"seconds_{stage}"
            self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - start, 3)


def open_wandb(api_key: str | None = None, config: dict | None = None, settings: dict | None = None) -> Any:
    """A wandb run (wandb is imported only here: it is optional).

    :param settings: ``wandb.init`` arguments (``project``, ``name``, ``entity``, ``tags``, ``mode``…), defaults
        to None (project ``agilerl-selfsft``)
    """
    import wandb

    if api_key:
        wandb.login(key=api_key)
    return wandb.init(**{"project": "agilerl-selfsft", **(settings or {})}, config=config or {})


def _tensorboard_writer(run_dir: Path | None) -> Any:
    if run_dir is None:
        raise SelfSFTError("tensorboard: true needs a run directory (checkpoint_path) to write to")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SelfSFTError("tensorboard: true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


@contextmanager
def visible_logs(verbose: bool = True) -> Iterator[None]:
    """While the block runs, show the ``agilerl_selfsft`` logger's INFO lines on stderr when nothing else would
    (neither it nor the root logger has a handler: a script that did not configure logging), and print log
    lines above tqdm's progress bars instead of through them. Only our own logger is changed, and only for the
    block; with ``verbose`` off nothing is.
    """
    ours = logging.getLogger("agilerl_selfsft")
    with ExitStack() as stack:
        if verbose and not ours.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            level = ours.level
            ours.addHandler(handler)
            ours.setLevel(logging.INFO if level == logging.NOTSET or level > logging.INFO else level)
            stack.callback(ours.setLevel, level)
            stack.callback(ours.removeHandler, handler)
        if verbose:
            stack.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger(), ours]))
        yield


def without_timings(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its timings (``wall_seconds``, ``gen_seconds``, ``eval_seconds``, ``seconds_*``), in
    its population's rows too: what two runs of the same computation (a resumed one, another launch) share."""
    timed = lambda key: key in ("wall_seconds", "gen_seconds", "eval_seconds") or key.startswith("seconds_")  # noqa: E731
    out = {k: v for k, v in row.items() if not timed(k)}
    if isinstance(out.get("population"), list):
        out["population"] = [without_timings(m) if isinstance(m, dict) else m for m in out["population"]]
    return out


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
