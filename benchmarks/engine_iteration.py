"""One SelfSFT iteration of the demo task per generation engine: wall time, generation time and tokens.

The demo config (``agilerl_selfsft/configs/capitals.yaml``: SmolLM2-135M-Instruct, K=4, 32 train prompts, 32 new
tokens) for ``--iterations`` iteration(s), held-out set cut to ``--eval-prompts`` prompts × 2 samples, run
through the CLI once per engine, each in a process of its own. Needs vLLM for the ``vllm`` engine::

    .venv-vllm/bin/python benchmarks/engine_iteration.py [--engines hf,vllm] [--iterations 1]

Writes ``engine_iteration.json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results/engines``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from machine import command_line, machine_info, matmul_gflops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAPITALS = REPO / "agilerl_selfsft" / "data" / "builtin" / "capitals"


def config_text(engine: str, iterations: int, eval_file: Path) -> str:
    text = (REPO / "agilerl_selfsft" / "configs" / "capitals.yaml").read_text()
    text = text.replace("../data/builtin/capitals/train.jsonl", str(CAPITALS / "train.jsonl"))
    text = text.replace("../data/builtin/capitals/eval.jsonl", str(eval_file))
    text = text.replace("iterations: 6", f"iterations: {iterations}").replace("eval_samples: 8 ", "eval_samples: 2 ")
    return text + f"device: cpu\ngeneration: {{engine: {engine}}}\n"


def run(engine: str, iterations: int, eval_prompts: int, threads: int, work: Path) -> dict:
    eval_file = work / "eval.jsonl"
    eval_file.write_text("".join((CAPITALS / "eval.jsonl").read_text().splitlines(keepends=True)[:eval_prompts]))
    config = work / f"{engine}.yaml"
    config.write_text(config_text(engine, iterations, eval_file) + f"threads: {threads}\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", str(config), "--output",
                           str(work / engine)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{engine}: the CLI failed: {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (work / engine / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {"engine": engine, "command_seconds": round(seconds, 1), "wall_seconds": last["wall_seconds"],
            "iteration_seconds": round(last["wall_seconds"] - rows[0]["wall_seconds"], 1),
            "gen_tokens": last["gen_tokens"], "gen_seconds": last["gen_seconds"],
            "gen_tokens_per_s": round(last["gen_tokens"] / max(last["gen_seconds"], 1e-9), 1),
            "eval_reward": [r["eval_reward"] for r in rows], "kept": last["kept"], "loss": last["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--eval-prompts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results" / "engines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = {"fp32": matmul_gflops(1.0, 1024), "bf16": matmul_gflops(1.0, 1024, torch.bfloat16)}
    print(f"matmul GFLOP/s at {args.threads} threads: {rates}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            results.append(run(engine, args.iterations, args.eval_prompts, args.threads, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    out = {"benchmark": "engine_iteration", "command": command_line(), "machine": machine_info(args.threads),
           "matmul_gflops_1024": rates,
           "settings": {"iterations": args.iterations, "eval_prompts": args.eval_prompts, "eval_samples": 2},
           "results": results}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "engine_iteration.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| engine | iteration (s) | generation (s) | generated tokens | tokens/s | held-out reward |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['iteration_seconds']} | {r['gen_seconds']} | {r['gen_tokens']} | "
              f"{r['gen_tokens_per_s']} | {' → '.join(f'{x:.3f}' for x in r['eval_reward'])} |" for r in results]
    (args.output_dir / "engine_iteration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
