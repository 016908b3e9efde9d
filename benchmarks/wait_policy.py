"""What ``OMP_WAIT_POLICY`` does to this library's CPU work: the same measurements in a fresh process under
``PASSIVE`` (what the tests set), unset (what ``make demo`` leaves) and ``ACTIVE``.

    .venv/bin/python benchmarks/wait_policy.py          # about 4 min on 2 cores

The policy is read once, when torch's OpenMP runtime loads, so each setting gets a process of its own (this
script again, with ``--child``). Each process measures, at ``--threads``:

- matmuls of the shapes the embedded SmolLM2-135M runs (hidden 576, MLP 1536, LoRA rank 16): a decode step's
  few rows, a training bucket's hundreds, and the LoRA adapters' thin ones (ms per call);
- one training pass (forward and backward, LoRA r16, no checkpointing) of a 16-row bucket of 55 tokens sharing
  29, whole and with the shared prefix run once (``shared_prefix_buckets.one_pass``; median of 3);
- ``SelfSFT.sample`` of 16 held-out capitals prompts × 4 completions, up to 32 new tokens (seed 0; median of 2
  after a warm-up): generated tokens per second.

Under PASSIVE the threads sleep after every parallel region and must be woken for the next; the many small
ops of a decode step or a LoRA layer pay that each time. Writes ``wait_policy.json`` and ``.md`` to
``--output-dir`` (default ``benchmarks/results``).
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POLICIES = ("PASSIVE", None, "ACTIVE")  # None: unset
#: (rows, inner, outer): M x K @ K x N
MATMULS = [(16, 576, 1536), (24, 576, 16), (360, 576, 16), (360, 576, 1536), (1024, 576, 1536)]


def child(threads: int, out: Path) -> None:
    """Measure under the policy this process was started with; write the numbers to ``out``."""
    sys.path.insert(0, str(HERE))
    import torch

    import agilerl_selfsft  # noqa: F401  (before agilerl)
    from agilerl_selfsft import SelfSFT, load_model, load_tasks
    from agilerl_selfsft.data.tasks import CAPITALS_DIR
    from peft import LoraConfig, get_peft_model
    from matmul_shapes import gflops
    from shared_prefix_buckets import MODEL, Transformer, one_pass

    torch.set_num_threads(threads)
    result: dict[str, Any] = {"matmul_ms": {}}
    for m, k, n in MATMULS:  # ms per call, from matmul_shapes' timed repeats
        result["matmul_ms"][f"{m}x{k}@{k}x{n}"] = round(2 * m * k * n / gflops(m, k, n, torch.float32) / 1e6, 4)

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    base, tokenizer = load_model(MODEL, dtype=torch.float32)
    peft_model = get_peft_model(base, lora)
    peft_model.train()
    model = Transformer(peft_model.base_model.model.model)
    one_pass(model, 4, 40, 20, True, seed=0)
    one_pass(model, 4, 40, 20, False, seed=0)
    result["learn_pass_s"] = {
        arm: round(statistics.median(one_pass(model, 16, 55, 29, arm == "shared", seed=i) for i in range(3)), 3)
        for arm in ("whole", "shared")}

    base, tokenizer = load_model(MODEL, dtype=torch.float32)
    agent = SelfSFT(actor_network=base, lora_config=lora, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                    pad_token=tokenizer.pad_token, num_generations=4, max_new_tokens=32, sampling_temperature=0.8,
                    top_p=1.0, top_k=0, use_vllm=False, device="cpu", seed=0)
    chats = [t.messages for t in load_tasks(CAPITALS_DIR / "eval.jsonl")[:16]]
    agent.sample(chats[:4], num_generations=4)
    rates = []
    for _ in range(2):
        torch.manual_seed(0)
        start = time.perf_counter()
        gen = agent.sample(chats, num_generations=4)
        rates.append(gen.num_tokens / (time.perf_counter() - start))
    result["sample_tokens_per_s"] = round(statistics.median(rates), 1)
    out.write_text(json.dumps(result))


def markdown(result: dict[str, Any]) -> str:
    names = [p or "unset" for p in POLICIES]
    runs = result["policies"]
    lines = [
        "# OMP_WAIT_POLICY: PASSIVE (the tests), unset (`make demo`), ACTIVE",
        "",
        f"Each column a fresh process, {result['threads']} threads, fp32, `{result['model']}`; × = the time (or "
        "rate) relative to unset.",
        "",
        "| measurement | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    unset = runs["unset"]

    def row(label: str, values: dict[str, float], unit: str, digits: int) -> str:
        cells = [f"{values[n]:.{digits}f} {unit} ({values[n] / values['unset']:.2f}×)" for n in names]
        return f"| {label} | " + " | ".join(cells) + " |"

    for shape in unset["matmul_ms"]:
        lines.append(row(f"matmul {shape}", {n: runs[n]["matmul_ms"][shape] for n in names}, "ms", 3))
    for arm in ("whole", "shared"):
        lines.append(row(f"training pass, 16 × 55 tokens, {arm}", {n: runs[n]["learn_pass_s"][arm] for n in names},
                         "s", 2))
    lines += [row("`SelfSFT.sample`, 16 prompts × 4, 32 new tokens",
                  {n: runs[n]["sample_tokens_per_s"] for n in names}, "tok/s", 0), ""]
    from machine import environment_markdown

    return "\n".join(lines + environment_markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.threads, args.child)
        return
    sys.path.insert(0, str(HERE))
    from machine import command_line, machine_info, machine_load

    load_before, runs = machine_load(), {}
    with tempfile.TemporaryDirectory(prefix="wait_policy_") as tmp:
        for policy in POLICIES:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            env["OMP_NUM_THREADS"] = str(args.threads)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            out = Path(tmp) / f"{policy or 'unset'}.json"
            print(f"[wait_policy] OMP_WAIT_POLICY {policy or 'unset'}", flush=True)
            subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", str(out)], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs[policy or "unset"] = json.loads(out.read_text())
    result = {"benchmark": "wait_policy", "model": "smollm2-135m-instruct", "threads": args.threads,
              "policies": runs, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": command_line(), "machine": machine_info(args.threads),
              "machine_load": {"before": load_before, "after": machine_load()}}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "wait_policy.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "wait_policy.md").write_text(markdown(result))
    print(f"[wait_policy] wrote {args.output_dir}/wait_policy.{{json,md}}", flush=True)


if __name__ == "__main__":
    main()
