"""The demo (``make demo``) side by side: a commit from before a change against this checkout, on one machine,
one after the other, nothing else running.

    .venv/bin/python benchmarks/demo_speed.py --before a1bb136     # about 25 min on 2 cores

Each side runs ``agilerl-selfsft train --config agilerl_selfsft/configs/capitals.yaml`` of its own checkout (its
own code and its own demo config, through ``PYTHONPATH``) in a process of its own with ``OMP_NUM_THREADS``
threads and ``OMP_WAIT_POLICY`` as ``make demo`` leaves it (unset; ``--wait-policy`` sets it and the result
records it; ``PASSIVE``, which the tests use, slows small matmuls: see ``machine.THREAD_ENV``), into a fresh run
folder. From each run's ``metrics.jsonl`` it reports the wall time, the held-out reward before and after (with
its sampling standard error where the run records one) and where the time went, summed over the run: sampling,
scoring, learning, evaluation (the base evaluation included) and the rest (checkpoints, the samples log,
start-up), and for the run after, each iteration's stages and the checkpoint and logs written after it. A run from before ``seconds_*`` were recorded has only sampling and
evaluation measured; its learning is then part of the rest.

Writes ``result.json`` and ``README.md`` to ``--output-dir`` (default ``benchmarks/results/demo_speed``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "agilerl_selfsft/configs/capitals.yaml"


def run_demo(source: Path, out: Path, threads: int, log: Path, config: Path | None = None,
             env_extra: dict[str, str] | None = None, wait_policy: str | None = None) -> float:
    """The demo of the checkout ``source`` into ``out`` (``config``, default the checkout's own demo config, with
    ``env_extra`` in its environment and ``OMP_WAIT_POLICY`` set to ``wait_policy``, default None: unset, as
    ``make demo`` runs); its wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"PYTHONPATH": str(source), "OMP_NUM_THREADS": str(threads), **(env_extra or {})})
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    config = source / CONFIG if config is None else config
    start = time.perf_counter()
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", str(config),
                        "--output", str(out)], env=env, cwd=source, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def summary(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Gain, and the run's time by stage, from its metrics rows."""
    later = rows[1:]
    stages = {"sample": sum(r.get("gen_seconds", 0.0) for r in later),
              "score": sum(r["seconds_score"] for r in later) if all("seconds_score" in r for r in later) else None,
              "learn": sum(r["seconds_learn"] for r in later) if all("seconds_learn" in r for r in later) else None,
              "evaluate": sum(r.get("seconds_evaluate", r.get("eval_seconds", 0.0)) for r in later)
              + rows[0].get("eval_seconds", 0.0)}
    stages["rest"] = wall - sum(v for v in stages.values() if v is not None)
    return {"wall_s": round(wall, 1), "iterations": len(later),
            "eval_reward": [round(r["eval_reward"], 4) for r in rows],
            "eval_reward_se": [None if r.get("eval_reward_se") is None else round(r["eval_reward_se"], 4) for r in rows],
            "eval_reward_greedy": [r.get("eval_reward_greedy") for r in rows],
            "gain": round(rows[-1]["eval_reward"] - rows[0]["eval_reward"], 4),
            "seconds": {k: None if v is None else round(v, 1) for k, v in stages.items()},
            "per_iteration_wall_s": [round(b["wall_seconds"] - a["wall_seconds"], 1) for a, b in zip(rows, later)],
            "per_iteration": per_iteration(rows), "outside_loop_s": round(wall - rows[-1]["wall_seconds"], 1),
            "base_eval_s": rows[0].get("eval_seconds")}


STAGES = ("generate", "select", "learn", "evaluate")


def per_iteration(rows: list[dict[str, Any]]) -> list[dict[str, float]] | None:
    """Each iteration's seconds by stage (sample, score, select, learn, evaluate) and ``after``: the time between
    its metrics row and the next iteration's first stage (its checkpoint, its samples log, its row written),
    measured as the next row's wall-clock step less that row's stages (None for the last iteration: its checkpoint
    is in the time outside the loop). None for a run that did not record its stages."""
    later = rows[1:]
    if not all(f"seconds_{stage}" in r for r in later for stage in STAGES):
        return None
    out = []
    for i, row in enumerate(later):
        nxt = later[i + 1] if i + 1 < len(later) else None
        after = None if nxt is None else (nxt["wall_seconds"] - row["wall_seconds"]
                                          - sum(nxt[f"seconds_{stage}"] for stage in STAGES))
        out.append({"sample": row["gen_seconds"], "score": row["seconds_score"], "select": row["seconds_select"],
                    "learn": row["seconds_learn"], "evaluate": row["seconds_evaluate"],
                    "after": None if after is None else round(after, 2),
                    "wall": round(row["wall_seconds"] - rows[i]["wall_seconds"], 1)})
    return out


def iteration_table(run: dict[str, Any]) -> list[str]:
    """The per-iteration breakdown of one run as Markdown lines (none for a run without one)."""
    if not run.get("per_iteration"):
        return []
    lines = ["| iteration | wall | sample | score | select | learn | evaluate | checkpoint and logs after it |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(run["per_iteration"], start=1):
        after = "in the time outside the loop" if r["after"] is None else f"{r['after']:.1f} s"
        lines.append(f"| {i} | {r['wall']:.1f} s | {r['sample']:.1f} s | {r['score']:.2f} s | {r['select']:.3f} s | "
                     f"{r['learn']:.1f} s | {r['evaluate']:.1f} s | {after} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    before, after = result["runs"]["before"], result["runs"]["after"]
    lines = [
        "# The demo side by side: before and after",
        "",
        f"`make demo` (`{CONFIG}`, each checkout its own) at `{result['before_commit']}` (before) and at "
        f"`{result['after_commit']}` (after), one after the other on this machine, {result['threads']} threads, "
        f"OMP_WAIT_POLICY {result.get('wait_policy') or 'unset'} in the demo processes.",
        "",
        "| | wall | held-out reward: base → last (gain) | SE of one evaluation | sample | score | learn | evaluate "
        "| rest |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in (("before", before), ("after", after)):
        s = run["seconds"]
        se = [x for x in run["eval_reward_se"] if x is not None]
        lines.append(
            f"| {name} | {run['wall_s'] / 60:.1f} min | {run['eval_reward'][0]:.3f} → {run['eval_reward'][-1]:.3f} "
            f"({run['gain']:+.3f}) | {f'{min(se):.3f}–{max(se):.3f}' if se else 'not recorded'} | "
            + " | ".join("–" if s[k] is None else f"{s[k]:.0f} s" for k in ("sample", "score", "learn", "evaluate", "rest"))
            + " |")
    lines += [
        "",
        f"**Speed-up: {before['wall_s'] / after['wall_s']:.2f}×** (wall time, before / after).",
        "",
        "Held-out reward per iteration (0 = the base policy):",
        "",
        f"- before: {', '.join(f'{x:.3f}' for x in before['eval_reward'])}",
        f"- after: {', '.join(f'{x:.3f}' for x in after['eval_reward'])}",
        "",
        *(["Where each iteration's time went (after; the base evaluation took "
           f"{after['base_eval_s']:.1f} s, and {after['outside_loop_s']:.1f} s were outside the loop: "
           "start-up, model load, the last checkpoint, the report):", "", *iteration_table(after), ""]
          if after.get("per_iteration") else []),
        "Sample / score / learn / evaluate: the seconds the runs spent there, summed over the run (evaluate includes "
        "the base evaluation). Rest: the wall time less those (checkpoints, the samples log, start-up and model "
        "load; for a run that did not record its learning time, learning too). SE: the sampling standard error of "
        "one evaluation's `eval_reward` on the held-out prompts (`eval_reward_se`).",
        "",
        *environment_markdown(result),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare against (run first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-policy", choices=("PASSIVE", "ACTIVE"),
                        help="OMP_WAIT_POLICY for both demos (default: unset, as make demo runs)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results" / "demo_speed")
    parser.add_argument("--rewrite", action="store_true",
                        help="only recompute result.json's summaries and README.md from the output dir's metrics files")
    args = parser.parse_args()
    out = args.output_dir
    if args.rewrite:
        result = json.loads((out / "result.json").read_text())
        for name, run in result["runs"].items():
            rows = [json.loads(line) for line in (out / f"metrics_{name}.jsonl").read_text().splitlines()]
            result["runs"][name] = summary(rows, run["wall_s"])
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "README.md").write_text(markdown(result))
        return
    out.mkdir(parents=True, exist_ok=True)
    load_before = machine_load()
    result: dict[str, Any] = {"benchmark": "demo_speed", "threads": args.threads, "runs": {},
                              "wait_policy": args.wait_policy,
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line()}
    with tempfile.TemporaryDirectory(prefix="demo_speed_") as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(old)], check=True)
        subprocess.run(["git", "-C", str(old), "checkout", "-q", args.before], check=True)
        result["before_commit"] = subprocess.run(["git", "-C", str(old), "rev-parse", "--short", "HEAD"], check=True,
                                                 capture_output=True, text=True).stdout.strip()
        result["after_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                                                capture_output=True, text=True).stdout.strip()
        for name, source in (("before", old), ("after", ROOT)):
            run_dir = Path(tmp) / f"run_{name}"
            print(f"[demo_speed] {name}: the demo of {source}", flush=True)
            wall = run_demo(source, run_dir, args.threads, out / f"{name}.log", wait_policy=args.wait_policy)
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            (out / f"metrics_{name}.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
            result["runs"][name] = summary(rows, wall)
            print(f"[demo_speed] {name}: {wall / 60:.1f} min, gain {result['runs'][name]['gain']:+.3f}", flush=True)
    result["machine"] = machine_info(args.threads)
    result["machine_load"] = {"before": load_before, "after": machine_load()}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "README.md").write_text(markdown(result))
    print(f"[demo_speed] wrote {out}/result.json and README.md", flush=True)


if __name__ == "__main__":
    main()
