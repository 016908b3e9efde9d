"""Write the arithmetic task: small additions and subtractions with a verifiable numeric answer.

Each row is ``{"messages": [...], "answer": "12"}`` (a task row with a chat, see ``tasks.py``), scored by the
built-in ``first_number`` reward: the chat is a fixed 3-shot prefix (three solved questions answered with the
bare number) then the question, e.g. ``"What is 7 + 5? Reply with the number only."``. Additions and
subtractions alternate: an addition adds two numbers from 1-12, a subtraction undoes one (``17 - 9``: the
subtrahend and the answer are in 1-12). Train and held-out
questions are distinct, and none is one of the three examples. Seeded: running it again writes the same files.

Why not two-digit operands and a bare question: SmolLM2-135M-Instruct answers "What is 23 + 48? Reply with the
number only." by restating the sum ("23 + 48 = 198"), so ``first_number`` reads the first operand and the base
model scores 0 (greedy and sampled) at every difficulty tried, with and without a system prompt; and when made
to answer with the number alone (the few-shot prefix), it is near chance beyond small operands (two-digit sums
0.0-0.1 greedy). With operands 1-12 and the prefix it scores about 0.2 greedy / 0.12 sampled (T=0.8) on 40
questions: room to learn both the format and the sums.

    .venv/bin/python benchmarks/make_arithmetic_task.py [--train 128] [--eval 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "agilerl_selfsft" / "data" / "builtin" / "arithmetic"
INSTRUCTION = "What is {a} {op} {b}? Reply with the number only."
EXAMPLES = ((4, "+", 3), (11, "-", 5), (6, "+", 8))  # the 3-shot prefix


def solve(a: int, op: str, b: int) -> str:
    return str(a + b if op == "+" else a - b)


def prefix() -> list[dict[str, str]]:
    """The solved examples every question starts with, as chat turns."""
    turns = []
    for a, op, b in EXAMPLES:
        turns += [{"role": "user", "content": INSTRUCTION.format(a=a, op=op, b=b)},
                  {"role": "assistant", "content": solve(a, op, b)}]
    return turns


def questions(n: int, rng: random.Random, seen: set[tuple[int, str, int]]) -> list[dict]:
    """``n`` distinct rows (additions and subtractions alternating) whose question is not in ``seen``."""
    rows = []
    while len(rows) < n:
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        op = "+" if len(rows) % 2 == 0 else "-"
        if op == "-":  # the inverse of an addition: a - b with both b and the answer in 1-12
            a = a + b
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        question = {"role": "user", "content": INSTRUCTION.format(a=a, op=op, b=b)}
        rows.append({"messages": [*prefix(), question], "answer": solve(a, op, b)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--eval", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng, seen = random.Random(args.seed), set(EXAMPLES)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("eval", args.eval)):
        rows = questions(n, rng, seen)
        (OUT_DIR / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{OUT_DIR / f'{split}.jsonl'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
