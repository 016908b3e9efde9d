"""One held-out evaluation of the demo: the greedy answers in a call of their own, or in the batch of the samples.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_greedy_batch.py     # about 5 min on 2 cores

The demo's agent (``agilerl_selfsft/configs/capitals.yaml``: the embedded SmolLM2-135M-Instruct, LoRA, T=0.8) on its
40 held-out prompts, sampled and scored as ``evaluate`` does, with K = 4 and K = 2 samples per prompt and one greedy
answer each: ``separate`` is ``sample_scored`` of the samples and then of the greedy answers (the evaluation before
2026-12-07), ``in batch`` is ``sample_scored_with_greedy`` (one call, the greedy rows decoded with the samples).
Median of ``--repeats`` runs, interleaved, each seeded alike. It also times one forward pass of one token per row at
8, 40 and 160 rows (the adapters folded, as the decode loop runs them): why a second, small call is not cheap.

Writes ``eval_greedy_batch.json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

CONFIG = HERE.parent / "agilerl_selfsft" / "configs" / "capitals.yaml"
ARMS = [("separate", 4), ("in batch", 4), ("separate", 2), ("in batch", 2)]


def measure(repeats: int) -> dict[str, Any]:
    import torch

    from agilerl_selfsft.cli import build
    from agilerl_selfsft.config import load_config
    from agilerl_selfsft.generation.collect import sample_scored, sample_scored_with_greedy
    from agilerl_selfsft.generation.folding import merged_lora

    config = load_config(CONFIG)
    pop, env = build(config.model_copy(update={"population": 1}))
    agent, seconds = pop[0], {f"{how}, K={k}": [] for how, k in ARMS}
    with env.eval_mode():
        tasks = env.prompts
        sample_scored(agent, env, tasks, greedy=True)  # warm-up
        for rep in range(repeats):
            for how, k in ARMS:
                torch.manual_seed(rep)
                start = time.perf_counter()
                if how == "separate":
                    sample_scored(agent, env, tasks, k, temperature=config.temperature)
                    sample_scored(agent, env, tasks, greedy=True)
                else:
                    sample_scored_with_greedy(agent, env, tasks, k, config.temperature)
                seconds[f"{how}, K={k}"].append(round(time.perf_counter() - start, 2))
                print(f"[eval_greedy_batch] {how}, K={k}: {seconds[f'{how}, K={k}'][-1]:.1f} s", flush=True)
    forward_ms = {}
    agent.actor.eval()
    with torch.inference_mode(), merged_lora(agent.actor) as forward:
        for rows in (8, 40, 160):
            ids = torch.randint(0, 1000, (rows, 1))
            for _ in range(3):
                forward(input_ids=ids)
            start = time.perf_counter()
            for _ in range(20):
                forward(input_ids=ids)
            forward_ms[rows] = round((time.perf_counter() - start) / 20 * 1000, 1)
    return {"prompts": len(tasks), "seconds": seconds, "forward_ms": forward_ms}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# One held-out evaluation: greedy answers in their own call or in the batch of the samples", "",
             f"The demo's agent on its {result['prompts']} held-out prompts, K samples per prompt at T=0.8 and one "
             f"greedy answer each, scored; median of {result['repeats']} runs (interleaved).", "",
             "| arm | median s | runs (s) |", "|---|---:|---|"]
    for arm, runs in result["seconds"].items():
        lines.append(f"| {arm} | {statistics.median(runs):.1f} | {', '.join(f'{s:.1f}' for s in runs)} |")
    lines += ["", "One forward pass of one token per row (adapters folded): "
              + ", ".join(f"{rows} rows {ms:.0f} ms" for rows, ms in result["forward_ms"].items()) + ".", "",
              *environment_markdown(result)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load_before = machine_load()
    result = {"benchmark": "eval_greedy_batch", "repeats": args.repeats, **measure(args.repeats),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
              "machine": machine_info(args.threads), "machine_load": {"before": load_before, "after": machine_load()}}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "eval_greedy_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "eval_greedy_batch.md").write_text(markdown(result))
    print(f"[eval_greedy_batch] wrote {args.output_dir}/eval_greedy_batch.{{json,md}}", flush=True)


if __name__ == "__main__":
    main()
