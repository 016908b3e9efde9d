"""How far can self-training on capitals go? The base model's own answers on the held-out prompts, many samples each.

SelfSFT (and its random-selection control) train on the 159 training countries; the 40 held-out countries are
others. Training on one country's capital teaches nothing about another's, so on held-out prompts self-training
can only *sharpen* what the base model already does: make it answer the way it most often answers (and in the
format the reward reads). This script measures, on the same held-out prompts and with the same sampling as
``learning.py`` (T=0.8, 32 new tokens, reward ``contains``):

- ``sampled``: the mean reward of the samples (the benchmark's "final sampled" at iteration 0);
- ``greedy``: the greedy answer's reward;
- ``majority``: the share of prompts whose samples are right more than half the time: what a policy sharpened
  onto its own most frequent answer gets right;
- ``pass@K``: the share of prompts with at least one right sample among K: no sharpening of the base model's
  own distribution gets above it.

Run from the repository root (about 3 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/capitals_ceiling.py            # the first 20 held-out prompts (as learning.py), K=32
    .venv/bin/python benchmarks/capitals_ceiling.py --prompts 40

Writes ``capitals_ceiling.json`` and ``.md`` to ``benchmarks/results/learning/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agilerl_selfsft  # noqa: F401, I001  (before anything from agilerl)
from agilerl_selfsft import load_model, load_tasks
from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.data.tasks import CAPITALS_DIR
from agilerl_selfsft.rewards import contains
from agilerl_selfsft.generation.decode import Sampling, sample

import argparse
import json
from datetime import datetime, timezone

import numpy as np
import torch

from machine import command_line, environment_markdown, machine_info, machine_load

OUT = Path(__file__).resolve().parent / "results" / "learning"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20, help="the first N held-out prompts (default 20)")
    parser.add_argument("-k", type=int, default=32, help="samples per prompt (default 32)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    load_before = machine_load()
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32)
    model.eval()
    tasks = load_tasks(CAPITALS_DIR / "eval.jsonl")[: args.prompts]
    texts = [render_prompt(tokenizer, t.messages) for t in tasks]
    answers = [t.columns["answer"] for t in tasks]
    stops = turn_end_token_ids(tokenizer)
    sampled = sample(model, tokenizer, texts, args.k, Sampling(args.max_new_tokens, stops, temperature=args.temperature))
    greedy = sample(model, tokenizer, texts, 1, Sampling(args.max_new_tokens, stops, greedy=True))
    per_prompt = []
    for task, answer, completions, best in zip(tasks, answers, sampled.texts, greedy.texts, strict=True):
        right = contains([task.prompt] * len(completions), completions, [answer] * len(completions))
        per_prompt.append({
            "prompt": task.prompt, "answer": answer, "p_right": float(np.mean(right)),
            "greedy_right": contains([task.prompt], best, [answer])[0], "greedy": best[0],
            "examples": completions[:3],
        })
    p = np.array([r["p_right"] for r in per_prompt])
    summary = {
        "sampled": float(p.mean()),
        "greedy": float(np.mean([r["greedy_right"] for r in per_prompt])),
        "majority": float((p > 0.5).mean()),
        f"pass@{args.k}": float((p > 0).mean()),
    }
    result = {
        "benchmark": "capitals_ceiling", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(), "settings": vars(args) | {"output_dir": str(args.output_dir)},
        "summary": summary, "per_prompt": per_prompt, "machine": machine_info(args.threads),
        "machine_load": {"before": load_before, "after": machine_load()},
    }
    lines = [
        f"# Capitals: the base model's ceiling on the first {args.prompts} held-out prompts",
        "",
        f"SmolLM2-135M-Instruct (fp32), {args.k} samples per prompt at T={args.temperature}, {args.max_new_tokens} "
        "new tokens, reward `contains` — the held-out prompts and settings of `learning.py`.",
        "",
        "| sampled (mean reward) | greedy | majority (right > half the time) | " + f"pass@{args.k} |",
        "|---|---|---|---|",
        f"| {summary['sampled']:.3f} | {summary['greedy']:.3f} | {summary['majority']:.3f} | {summary[f'pass@{args.k}']:.3f} |",
        "",
        "| prompt | answer | P(right) | greedy answer |",
        "|---|---|---|---|",
        *[f"| {r['prompt']} | {r['answer']} | {r['p_right']:.2f} | {r['greedy'][:60]} |" for r in per_prompt],
        "",
        *environment_markdown(result),
    ]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "capitals_ceiling" + ("" if args.prompts == 20 else f"_{args.prompts}")
    (args.output_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary))
    return result


if __name__ == "__main__":
    main()
