"""What the model wrote: every iteration's samples in ``RUN/samples/iteration_NNNN.jsonl``, the best and worst
in the log, and (with wandb) a table.

A reward that scores 0 everywhere is most often a reward that reads the wrong thing (the first number of the
prompt's operands, a case-sensitive match); the samples show it at once. One row per sample of the iteration
(every agent's), in the order they were generated:

- ``iteration``, ``agent``, ``prompt_id``, ``prompt`` (the turns before the reply), ``completion``;
- ``reward`` and ``terms`` (each reward function's value by name; ``None``: that function gave no score);
- ``kept`` (selected this iteration), ``replayed`` (a past winner learned again: these rows come after the
  iteration's own, with the reward they had then), ``finish_reason`` (``stop``: it ended its turn; ``length``:
  cut off at ``max_new_tokens``).

Completions no reward function scored are not samples (they are counted as ``train_unscored``). Runs with more
rows than ``per_iteration`` write a seeded random subset of that size, every kept row among the first; the
log line says how many of how many.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from agilerl_selfsft.samples import Scored

log = logging.getLogger("agilerl_selfsft")
SAMPLES_DIR = "samples"
#: rows written per iteration by default: all samples of the demo (64 prompts x K=4), a subset of larger runs
DEFAULT_PER_ITERATION = 512


def sample_rows(iteration: int, agent: int, scored: list[Scored], buffer: list[Scored]) -> list[dict[str, Any]]:
    """The rows of one agent's iteration: its scored samples, flagged ``kept`` when selected into ``buffer``,
    then the replayed past winners the buffer holds (static conversations are no samples: left out)."""
    in_buffer = {id(s) for s in buffer}
    mine = {id(s) for s in scored}
    replayed = [s for s in buffer if id(s) not in mine and not s.static]
    return [_row(iteration, agent, s, kept=id(s) in in_buffer, replayed=False) for s in scored] + [
        _row(iteration, agent, s, kept=False, replayed=True) for s in replayed
    ]


def _row(iteration: int, agent: int, s: Scored, kept: bool, replayed: bool) -> dict[str, Any]:
    return {
        "iteration": iteration, "agent": agent, "prompt_id": s.prompt_id, "prompt": s.messages[:-1],
        "completion": s.completion, "reward": s.reward, "terms": dict(s.terms) or None,
        "kept": kept, "replayed": replayed, "finish_reason": "stop" if s.finished else "length",
    }


def write_samples(
    run_dir: Path, iteration: int, rows: list[dict[str, Any]], per_iteration: int | None = DEFAULT_PER_ITERATION,
    seed: int = 0,
) -> Path | None:
    """Write ``rows`` as ``run_dir/samples/iteration_NNNN.jsonl`` (atomically: a complete file or none).

    :param per_iteration: most rows written (kept rows first, then a seeded random choice of the others, in
        their order), defaults to :data:`DEFAULT_PER_ITERATION`; None writes all, 0 none
    :param seed: seeds the choice (with the iteration), defaults to 0
    :return: the file, or None when nothing was written
    """
    if per_iteration == 0 or not rows:
        return None
    chosen = rows
    if per_iteration is not None and len(rows) > per_iteration:
        kept = [i for i, r in enumerate(rows) if r["kept"]][:per_iteration]
        others = [i for i, r in enumerate(rows) if not r["kept"]]
        rng = np.random.default_rng([seed, iteration])
        extra = rng.choice(len(others), size=per_iteration - len(kept), replace=False) if others else []
        chosen = [rows[i] for i in sorted([*kept, *(others[j] for j in extra)])]
        log.info("[SelfSFT %d] Wrote %d of %d samples (samples.per_iteration).", iteration, len(chosen), len(rows))
    folder = run_dir / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"iteration_{iteration:04d}.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False, allow_nan=False, default=str) + "\n" for r in chosen))
    tmp.replace(path)
    return path


def prune_samples(run_dir: Path, after: int) -> None:
    """Delete the sample files of iterations after ``after`` (a resumed run redoes them)."""
    folder = run_dir / SAMPLES_DIR
    for path in sorted(folder.glob("iteration_*.jsonl*")) if folder.is_dir() else []:
        number = path.name.split(".")[0].removeprefix("iteration_")
        if number.isdigit() and int(number) > after:
            path.unlink()


def log_best_and_worst(tag: str, scored: list[Scored], n: int = 1, width: int = 160) -> None:
    """Log the ``n`` best and ``n`` worst samples of ``scored`` (their reward and the reply, shortened)."""
    if n <= 0 or not scored:
        return
    ranked = sorted(scored, key=lambda s: s.reward, reverse=True)
    picks = [("best", s) for s in ranked[:n]] + [("worst", s) for s in ranked[::-1][:n] if len(ranked) > n]
    for which, s in picks:
        reply = " ".join(s.completion.split())
        reply = reply if len(reply) <= width else reply[: width - 1] + "…"
        log.info("%s [Stage 2] %s sample (reward %.3f, prompt %d): %s", tag, which.capitalize(), s.reward,
                 s.prompt_id, reply)


def samples_table(rows: list[dict[str, Any]]) -> Any:
    """The rows as a ``wandb.Table`` (prompt's last turn, completion, reward, flags), as TRL's completion log."""
    import wandb

    columns = ["iteration", "agent", "prompt_id", "prompt", "completion", "reward", "kept", "replayed",
               "finish_reason"]
    data = [[r["iteration"], r["agent"], r["prompt_id"], str(r["prompt"][-1]["content"]) if r["prompt"] else "",
             r["completion"], r["reward"], r["kept"], r["replayed"], r["finish_reason"]] for r in rows]
    return wandb.Table(columns=columns, data=data)
