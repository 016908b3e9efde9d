"""How far the checker-free rewards agree with a real checker, on the base model's own samples.

- ``judge`` vs ``contains`` on the capitals held-out split: the embedded SmolLM2-135M-Instruct judges its own
  samples (what ``model: policy`` does at iteration 1: the frozen reference is the base model), on the yes/no
  rubric and on the 1-10 rubric. Reported: accuracy and correlation against ``contains``, and the share of
  replies it could not parse.
- ``majority_vote`` vs ``first_number`` on the arithmetic held-out split: K samples per prompt, the vote's
  pseudo-label against the real answer (``label_accuracy``), and the share of samples whose vote reward equals
  the real reward.

Run from the repository root (a few minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/reward_agreement.py

Writes ``reward_agreement.json`` and ``.md`` to ``benchmarks/results/rewards/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agilerl_selfsft  # noqa: F401, I001  (before anything from agilerl)
from agilerl_selfsft import load_model, load_tasks
from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.data.tasks import ARITHMETIC_DIR, CAPITALS_DIR
from agilerl_selfsft.generation.decode import Sampling, sample
from agilerl_selfsft.rewards import contains, first_number, judge, majority_vote

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np
import torch

from machine import command_line, environment_markdown, machine_info, machine_load

OUT = Path(__file__).resolve().parent / "results" / "rewards"


def _samples(model, tokenizer, tasks, k, args):
    texts = [render_prompt(tokenizer, t.messages) for t in tasks]
    out = sample(model, tokenizer, texts, k, Sampling(args.max_new_tokens, turn_end_token_ids(tokenizer),
                                                      temperature=args.temperature))
    prompts = [t.prompt for t in tasks for _ in range(k)]
    answers = [t.columns["answer"] for t in tasks for _ in range(k)]
    return prompts, [c for group in out.texts for c in group], answers


def _corr(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=4, help="samples per capitals prompt (default 4)")
    parser.add_argument("--vote-k", type=int, default=8, help="samples per arithmetic prompt (default 8)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = machine_load()
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32, device="cpu")
    model.eval()
    result: dict = {"benchmark": "reward_agreement", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": command_line(), "settings": vars(args) | {"output_dir": str(args.output_dir)}}

    prompts, completions, answers = _samples(model, tokenizer, load_tasks(CAPITALS_DIR / "eval.jsonl"), args.k, args)
    truth = contains(prompts, completions, answers)
    judged = {}
    for scale in ("yes_no", [1, 10]):
        start = time.perf_counter()
        got = judge(prompts, completions, model="smollm2-135m-instruct", scale=scale)
        name = "yes_no" if scale == "yes_no" else "1-10"
        judged[name] = {
            "accuracy_at_0.5": float(np.mean([(g >= 0.5) == (t >= 0.5) for g, t in zip(got, truth)])),
            "correlation": _corr(got, truth), "mean_score": float(np.mean(got)),
            "unparseable": got.metrics["judge_unparseable"] / len(got), "seconds": time.perf_counter() - start,
        }
    result["judge"] = {"samples": len(completions), "contains_mean": float(np.mean(truth)), "by_scale": judged}

    tasks = load_tasks(ARITHMETIC_DIR / "eval.jsonl")
    prompts, completions, answers = _samples(model, tokenizer, tasks, args.vote_k, args)
    real = first_number(prompts, completions, answers)
    voted = {}
    for min_agreement in (0.0, 0.5):
        vote = majority_vote(prompts, completions, min_agreement=min_agreement, answer=answers)
        voted[str(min_agreement)] = {
            "label_accuracy": vote.metrics["label_accuracy"], "label_agreement": vote.metrics["label_agreement"],
            "prompts_skipped": vote.metrics["vote_skipped"], "reward_equal_to_real": float(np.mean(
                [v == r for v, r in zip(vote, real)])), "vote_reward_mean": float(np.mean(vote)),
        }
    result["majority_vote"] = {"prompts": len(tasks), "k": args.vote_k, "real_reward_mean": float(np.mean(real)),
                               "by_min_agreement": voted}
    result |= {"machine": machine_info(args.threads), "machine_load": {"before": load_before, "after": machine_load()}}

    j, v = result["judge"], result["majority_vote"]
    lines = [
        "# Checker-free rewards against a real checker (base SmolLM2-135M-Instruct, fp32)", "",
        f"## judge vs `contains`: capitals held-out, {j['samples']} samples (K={args.k}, T={args.temperature}); "
        f"`contains` mean {j['contains_mean']:.3f}", "",
        "| rubric | accuracy (score ≥ 0.5 vs right) | correlation | mean score | unparseable | seconds |",
        "|---|---|---|---|---|---|",
        *[f"| {n} | {r['accuracy_at_0.5']:.3f} | {r['correlation']:.3f} | {r['mean_score']:.3f} | "
          f"{r['unparseable']:.3f} | {r['seconds']:.1f} |" for n, r in j["by_scale"].items()], "",
        f"## majority_vote vs `first_number`: arithmetic held-out, {v['prompts']} prompts × K={v['k']}; real reward "
        f"mean {v['real_reward_mean']:.3f}", "",
        "| min_agreement | pseudo-label = real answer | agreement | prompts skipped | vote reward = real reward |",
        "|---|---|---|---|---|",
        *[f"| {m} | {r['label_accuracy']:.3f} | {r['label_agreement']:.3f} | {r['prompts_skipped']:.0f} | "
          f"{r['reward_equal_to_real']:.3f} |" for m, r in v["by_min_agreement"].items()], "",
        *environment_markdown(result),
    ]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "reward_agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "reward_agreement.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"judge": judged, "majority_vote": voted}, indent=1))
    return result


if __name__ == "__main__":
    main()
