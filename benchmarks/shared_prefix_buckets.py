"""When does running a bucket's shared prompt prefix once pay? One training pass (forward and backward) of one
length bucket, shared prefix against the whole bucket, over a grid of bucket shapes.

    .venv/bin/python benchmarks/shared_prefix_buckets.py          # about 4 min on 2 cores

A bucket is ``rows`` rows of ``length`` tokens whose first ``prefix`` tokens are the same (a chat template's
system turn is ~21-24 tokens). Each shape runs the embedded SmolLM2-135M-Instruct with LoRA r16 on all linear
layers (training mode, no dropout, no gradient checkpointing: where :mod:`agilerl_selfsft.algorithm.shared_prefix`
applies), the transformer without its lm_head (as SelfSFT runs it), and a loss on every row's own positions:

- *whole*: one pass over the bucket;
- *shared*: :func:`~agilerl_selfsft.algorithm.shared_prefix.forward_with_shared_prefix` (the prefix at batch 1,
  then every row's own tokens against its copied cache).

The two alternate, ``--repeats`` times each after a warm-up; the table has the median seconds, the speed-up
(whole / shared) and what :func:`~agilerl_selfsft.algorithm.shared_prefix.shared_prefix_length`'s rule decides
for that shape (share when ``(rows - 1) * prefix >= MIN_SAVED_POSITIONS``). The thread settings are recorded:
``OMP_WAIT_POLICY=PASSIVE`` slows the many small matmuls of the shared pass more than the whole one.

Writes ``shared_prefix_buckets.json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agilerl_selfsft  # noqa: F401, I001  (before agilerl: fixes agilerl 2.10.0's LLM-dependency flag)
from agilerl_selfsft import load_model
from agilerl_selfsft.algorithm.shared_prefix import (
    MIN_SAVED_POSITIONS,
    forward_with_shared_prefix,
    shared_prefix_length,
)

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from machine import command_line, environment_markdown, machine_info, machine_load

MODEL = "smollm2-135m-instruct"
#: (rows, length, prefix): 24 is about a system turn; the demo's buckets are 16 rows of ~55 tokens sharing 29
SHAPES = [(2, 45, 24), (3, 45, 24), (4, 45, 24), (8, 45, 24), (16, 45, 24), (2, 80, 24), (4, 80, 24),
          (8, 80, 24), (16, 80, 24), (2, 150, 24), (4, 150, 24), (8, 150, 24), (2, 60, 40), (4, 60, 40),
          (16, 55, 29)]


class Transformer(torch.nn.Module):
    """The causal LM without its lm_head, its last hidden states returned as ``logits`` (as SelfSFT's pass)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs: Any) -> Any:
        out = self.model(**kwargs)
        out.logits = out.last_hidden_state
        return out


def one_pass(model: Transformer, rows: int, length: int, prefix: int, shared: bool, seed: int) -> float:
    """Seconds for one forward and backward of a bucket, shared prefix or whole."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, 40000, (rows, length), generator=g)
    ids[:, :prefix] = ids[:1, :prefix]
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    start = time.perf_counter()
    hidden = forward_with_shared_prefix(model, kwargs, prefix) if shared else model(**kwargs).logits[:, prefix:]
    hidden.pow(2).mean().backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def measure(model: Transformer, shape: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    rows, length, prefix = shape
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    for i in range(repeats):
        for arm in times:
            times[arm].append(one_pass(model, rows, length, prefix, arm == "shared", seed=i))
    shared, whole = statistics.median(times["shared"]), statistics.median(times["whole"])
    ids = torch.arange(length).repeat(rows, 1)
    ids[:, prefix:] += torch.arange(rows)[:, None] * length  # rows part after the prefix
    keep = torch.zeros(rows, length - 1, dtype=torch.bool)
    keep[:, prefix:] = True
    return {"rows": rows, "length": length, "prefix": prefix, "saved_positions": (rows - 1) * prefix,
            "ideal_speedup": round(rows * length / (prefix + rows * (length - prefix)), 3),
            "shared_s": round(shared, 4), "whole_s": round(whole, 4), "speedup": round(whole / shared, 3),
            "rule_shares": shared_prefix_length(ids, torch.ones_like(ids), keep) > 0,
            "times": {k: [round(t, 4) for t in v] for k, v in times.items()}}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# When does running the shared prompt prefix once pay?",
        "",
        f"One forward + backward of one bucket, `{MODEL}` (float32) with LoRA r16 on all linear layers, training "
        f"mode, no gradient checkpointing; median of {result['repeats']} interleaved runs per arm. Speed-up = whole "
        "/ shared seconds; ideal = whole positions / shared positions (prefix once + every row's rest). The rule: "
        f"share when (rows - 1) × prefix ≥ {result['min_saved_positions']} saved positions.",
        "",
        "| rows | length | prefix | saved positions | whole s | shared s | speed-up | ideal | rule shares "
        "| rule right |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["shapes"]:
        right = r["rule_shares"] == (r["speedup"] > 1.0)
        lines.append(f"| {r['rows']} | {r['length']} | {r['prefix']} | {r['saved_positions']} | {r['whole_s']:.2f} | "
                     f"{r['shared_s']:.2f} | **{r['speedup']:.2f}×** | {r['ideal_speedup']:.2f}× | "
                     f"{'yes' if r['rule_shares'] else 'no'} | {'yes' if right else 'no'} |")
    s = result["summary"]
    lines += [
        "",
        f"- Shapes the rule shares: speed-up {s['shared_min']:.2f}–{s['shared_max']:.2f}× (geometric mean "
        f"{s['shared_geomean']:.2f}×); shapes it runs whole would have run "
        f"{s['whole_min']:.2f}–{s['whole_max']:.2f}× shared (geometric mean {s['whole_geomean']:.2f}×).",
        "- Always sharing (the rule before) against the rule, geometric mean over all shapes: "
        f"{s['always_geomean']:.2f}× vs {s['rule_geomean']:.2f}×.",
        "- A ratio within ~±10% of 1 is within this machine's run-to-run noise.",
        "",
        *environment_markdown(result),
    ]
    return "\n".join(lines) + "\n"


def geomean(xs: list[float]) -> float:
    return statistics.geometric_mean(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = machine_load()
    base, _ = load_model(MODEL, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)
    peft_model.train()
    model = Transformer(peft_model.base_model.model.model)
    for shared in (True, False):
        one_pass(model, 4, 40, 20, shared, seed=0)
    shapes = []
    for shape in SHAPES:
        shapes.append(measure(model, shape, args.repeats))
        print(f"[shared_prefix_buckets] rows {shape[0]} length {shape[1]} prefix {shape[2]}: "
              f"{shapes[-1]['speedup']:.2f}x", flush=True)
    on = [r["speedup"] for r in shapes if r["rule_shares"]]
    off = [r["speedup"] for r in shapes if not r["rule_shares"]]
    summary = {"shared_min": min(on, default=float("nan")), "shared_max": max(on, default=float("nan")),
               "shared_geomean": geomean(on), "whole_min": min(off, default=float("nan")),
               "whole_max": max(off, default=float("nan")), "whole_geomean": geomean(off),
               "always_geomean": geomean([r["speedup"] for r in shapes]),
               "rule_geomean": geomean([r["speedup"] if r["rule_shares"] else 1.0 for r in shapes])}
    result = {"benchmark": "shared_prefix_buckets", "model": MODEL, "repeats": args.repeats,
              "min_saved_positions": MIN_SAVED_POSITIONS, "shapes": shapes,
              "summary": {k: round(v, 3) for k, v in summary.items()},
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
              "machine": machine_info(args.threads), "machine_load": {"before": load_before, "after": machine_load()}}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "shared_prefix_buckets.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "shared_prefix_buckets.md").write_text(markdown(result))
    print(f"[shared_prefix_buckets] wrote {args.output_dir}/shared_prefix_buckets.{{json,md}}", flush=True)
    return result


if __name__ == "__main__":
    main()
