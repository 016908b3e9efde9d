"""Where one ``SelfSFT.sample`` call's time goes, stage by stage, optionally side by side with an earlier commit.

The call is the generation benchmark's (held-out capitals prompts, K completions each, T=0.8, 32 new tokens, LoRA
r=16 folded, the embedded model in fp32) with timers around the decode loop's stages
(:mod:`agilerl_selfsft.generation.decode`): the prefills of admitted prompts, the decode steps (by live rows),
the draws (``Sampling.choose``), the joins of refilled rows and the drops of ended ones. With ``--before REV``
each repeat runs REV's checkout and then this one, each in a fresh process, so both see the same machine::

    .venv/bin/python benchmarks/decode_stages.py --prompts 64 -k 8 --before 0f59efd --repeats 2

Writes ``decode_stages[_TAG].json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prefill", "step", "choose", "join", "drop")


def worker(prompts: int, k: int, rows: int, threads: int) -> dict[str, Any]:
    """One timed call in this process (whichever ``agilerl_selfsft`` is first on the path)."""
    import agilerl_selfsft  # noqa: F401  (before agilerl)
    import torch
    from peft import LoraConfig

    from agilerl_selfsft import SelfSFT, load_model, load_tasks
    from agilerl_selfsft.data.tasks import CAPITALS_DIR
    from agilerl_selfsft.generation import decode

    torch.set_num_threads(threads)
    tasks = load_tasks(CAPITALS_DIR / "eval.jsonl")
    while len(tasks) < prompts:
        tasks = tasks + tasks
    chats = [t.messages for t in tasks[:prompts]]
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    agent = SelfSFT(actor_network=model, lora_config=lora, tokenizer=tokenizer, num_generations=k, max_new_tokens=32,
                    generation_batch_size=rows, sampling_temperature=0.8, pad_token_id=tokenizer.pad_token_id,
                    pad_token=tokenizer.pad_token, seed=0)
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    step_rows: list[int] = []

    def timed(owner: type, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if stage == "step":
                step_rows.append(len(args[1].live))
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            seconds[stage] += time.perf_counter() - start
            calls[stage] += 1
            return out

        setattr(owner, name, wrapper)

    drop = "drop" if hasattr(decode._Rows, "drop") else "select"  # the name before the drop moved rows
    for owner, name, stage in ((decode._Loop, "_prefill", "prefill"), (decode._Loop, "_step", "step"),
                               (decode.Sampling, "choose", "choose"), (decode._Rows, "join", "join"),
                               (decode._Rows, drop, "drop")):
        timed(owner, name, stage)
    agent.sample(chats[:2], num_generations=k)  # warm-up
    seconds.clear(), calls.clear(), step_rows.clear()
    torch.manual_seed(0)
    start = time.perf_counter()
    gen = agent.sample(chats, num_generations=k)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": gen.num_tokens, "tokens_per_s": gen.num_tokens / wall,
            "seconds": {s: seconds[s] for s in STAGES}, "calls": {s: calls[s] for s in STAGES},
            "steps": len(step_rows), "mean_live_rows": statistics.fmean(step_rows) if step_rows else 0.0}


def run_side(source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One worker process on the checkout ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--prompts", str(args.prompts), "-k", str(args.k),
           "--rows", str(args.rows), "--threads", str(args.threads)]
    out = subprocess.run(cmd, cwd=source, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Decode loop stages: {s['prompts']} prompts × K={s['k']}, up to {s['rows']} live rows",
        "",
        "One `SelfSFT.sample` call (embedded model, fp32, LoRA r=16 folded, T=0.8, 32 new tokens) after a warm-up, "
        "each in a fresh process; seconds inside each stage of the decode loop. Median over repeats (each value its "
        "own median).",
        "",
        "| checkout | tokens/s | wall s | " + " | ".join(f"{st} s (calls)" for st in STAGES) + " | other s | steps | "
        "mean live rows |",
        "|---|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|",
    ]
    for name, runs in result["runs"].items():
        med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
        stages = [f"{med(lambda r, st=st: r['seconds'][st]):.2f} ({med(lambda r, st=st: r['calls'][st]):.0f})"
                  for st in STAGES]
        other = med(lambda r: r["wall_s"] - sum(r["seconds"].values()))
        lines.append(f"| {name} ({result['commits'][name]}) | **{med(lambda r: r['tokens_per_s']):.1f}** | "
                     f"{med(lambda r: r['wall_s']):.2f} | " + " | ".join(stages) +
                     f" | {other:.2f} | {med(lambda r: r['steps']):.0f} | {med(lambda r: r['mean_live_rows']):.1f} |")
    lines += ["", "Each run, tokens/s: " + "; ".join(
        f"{name} " + ", ".join(f"{r['tokens_per_s']:.1f}" for r in runs) for name, runs in result["runs"].items()),
        "", *environment_markdown(result)]
    return "\n".join(lines) + "\n"


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", "-k", type=int, default=8)
    parser.add_argument("--rows", type=int, default=128, help="generation_batch_size (default 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs per checkout, interleaved (default 2)")
    parser.add_argument("--before", help="an earlier commit to run side by side (first in each repeat)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.prompts, args.k, args.rows, args.threads)))
        return
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    result: dict[str, Any] = {
        "benchmark": "decode_stages", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(), "settings": {k: getattr(args, k) for k in ("prompts", "k", "rows", "threads")},
        "commits": {"after": git("rev-parse", "--short", "HEAD") + (" + changes" if dirty else "")},
        "runs": {}, "machine_load": {"before": machine_load()},
    }
    with tempfile.TemporaryDirectory(prefix="decode_stages_") as tmp:
        sides = {"after": ROOT}
        if args.before:
            old = Path(tmp) / "before"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(old)], check=True)
            git("checkout", "-q", args.before, cwd=old)
            result["commits"] = {"before": git("rev-parse", "--short", "HEAD", cwd=old), **result["commits"]}
            sides = {"before": old, **sides}
        for rep in range(args.repeats):
            for name, source in sides.items():
                r = run_side(source, args)
                result["runs"].setdefault(name, []).append(r)
                print(f"[decode_stages] {rep + 1}/{args.repeats} {name}: {r['tokens']} tokens in {r['wall_s']:.2f} s "
                      f"= {r['tokens_per_s']:.1f} tokens/s", flush=True)
    result["machine_load"]["after"] = machine_load()
    result["machine"] = machine_info(args.threads)
    stem = "decode_stages" + (f"_{args.tag}" if args.tag else "")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / f"{stem}.md").write_text(markdown(result))
    print(f"[decode_stages] wrote {args.output_dir / stem}.json and .md", flush=True)


if __name__ == "__main__":
    main()
