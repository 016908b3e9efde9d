"""Long-run check: 50 self-training iterations on a tiny model, memory sampled throughout.

Goal (issue 3): peak RSS flat after warm-up (< 5% drift) and no slowdown per iteration. A background thread
reads the process's resident memory every 50 ms; each iteration's peak is the largest sample between its
start and end. Checkpoints are written every iteration, as in a real run.

    .venv/bin/python benchmarks/longrun_memory.py [--iterations 50] [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the sibling module

import agilerl_selfsft  # noqa: E402,F401  (before agilerl)
import torch  # noqa: E402
from machine import command_line, machine_info  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from agilerl_selfsft import SelfSFT, SelfSFTGym, finetune_llm_selfsft  # noqa: E402
from agilerl_selfsft.data.tasks import task_from_row  # noqa: E402
from agilerl_selfsft.models import load_tokenizer  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def even_length(prompts, completions, **_):
    return [float(len(c) % 2 == 0) for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="iterations before drift is measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
    ))
    agent = SelfSFT(
        pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model, tokenizer=tokenizer,
        lora_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        batch_size=8, lr=1e-3, num_generations=4, max_new_tokens=16, gradient_checkpointing=False,
    )
    tasks = [task_from_row({"prompt": f"Question number {i}?", "answer": str(i)}, i) for i in range(64)]
    env = SelfSFTGym(tasks[:48], tasks[48:], tokenizer, even_length, data_batch_size_per_gpu=8,
                     keep_truncated=True, replay_capacity=256, replay_ratio=1.0)

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mib()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        sampler.start()
        _, history = finetune_llm_selfsft([agent], env, iterations=args.iterations, prompts_per_iteration=16,
                                          sft_epochs=1, eval_samples=2, checkpoint_path=run_dir, verbose=False)
        stop.set()
        sampler.join()

    rows = []
    previous_end = 0.0
    for row in history:
        end = row["wall_seconds"]
        window = [rss for t, rss in samples if previous_end <= t - start <= end + 0.05] or [rss_mib()]
        rows.append({"iteration": row["iteration"], "peak_rss_mib": round(max(window), 1), "seconds": round(end - previous_end, 3)})
        previous_end = end
    steady = [r for r in rows if r["iteration"] >= args.warmup]
    first, last = steady[0]["peak_rss_mib"], max(r["peak_rss_mib"] for r in steady[-10:])
    early = sum(r["seconds"] for r in steady[:10]) / 10
    late = sum(r["seconds"] for r in steady[-10:]) / 10
    result = {
        "command": command_line(), "machine": machine_info(args.threads), "iterations": args.iterations,
        "rss_drift_percent": round(100 * (last - first) / first, 2),
        "rss_after_warmup_mib": first, "rss_last10_peak_mib": last,
        "seconds_per_iteration_first10": round(early, 3), "seconds_per_iteration_last10": round(late, 3),
        "slowdown_percent": round(100 * (late - early) / early, 1), "per_iteration": rows,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "longrun_memory.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Long run: 50 iterations, memory and time per iteration",
        "",
        f"Command: `{result['command']}`. Tiny Llama (hidden 64, 2 layers, SmolLM2 vocabulary), LoRA r=8, "
        "16 prompts × K=4 per iteration, replay 256, a checkpoint written every iteration.",
        "",
        f"- Peak RSS after {args.warmup} warm-up iterations: {first} MiB; highest peak of the last 10: {last} MiB "
        f"→ drift **{result['rss_drift_percent']}%** (goal < 5%).",
        f"- Seconds per iteration: {early:.3f} (first 10 after warm-up) vs {late:.3f} (last 10) → "
        f"**{result['slowdown_percent']}%**.",
        "",
        "| iteration | peak RSS MiB | seconds |",
        "| ---: | ---: | ---: |",
        *[f"| {r['iteration']} | {r['peak_rss_mib']} | {r['seconds']} |" for r in rows],
        "",
        f"Machine: {result['machine']}",
    ]
    (out / "longrun_memory.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[4:6]))


if __name__ == "__main__":
    main()
