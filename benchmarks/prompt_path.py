"""Which of the library's modules one prompt passes through in one iteration of the loop, in order.

A tiny Llama (the SmolLM2 vocabulary, random weights) answers one train prompt and one held-out prompt for
one iteration of ``finetune_llm_selfsft`` (K=2, every sample kept even when cut off, one learning step, sampled and greedy
evaluation). ``sys.setprofile`` records every call into a file of ``agilerl_selfsft``; consecutive calls
within one file are one visit. The result is the path of the data through the code: which files, in which
order, how often each is entered, and which of its functions were called how often. It uses the public API only, so it runs on any version of the package
(the architecture note compares two).

    .venv/bin/python benchmarks/prompt_path.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import agilerl_selfsft  # noqa: F401  (first: it applies the agilerl 2.10.0 fixes)
import torch
from machine import command_line, cpu_model
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM

from agilerl_selfsft import SelfSFT, SelfSFTGym, Task, finetune_llm_selfsft
from agilerl_selfsft.models import load_tokenizer

ROOT = Path(agilerl_selfsft.__file__).resolve().parent


def always(prompts: list, completions: list[str], **_: object) -> list[float]:
    return [1.0] * len(completions)


def trace() -> tuple[list[str], Counter]:
    """The files of ``agilerl_selfsft`` entered during one iteration (one entry per visit), and the calls of
    each of its functions (``file:function``)."""
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    agent = SelfSFT(
        pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model, tokenizer=tokenizer,
        lora_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
        batch_size=2, max_new_tokens=4, num_generations=2, gradient_checkpointing=False,
    )
    question = [{"role": "user", "content": "Say yes."}]
    env = SelfSFTGym([Task(0, question, "Say yes.")], [Task(0, question, "Say yes.")], tokenizer, reward=always,
                     keep_truncated=True)
    visits: list[str] = []
    calls: Counter = Counter()

    def profile(frame, event, arg):  # noqa: ANN001, ANN202 -- sys.setprofile's signature
        if event == "call":
            name = frame.f_code.co_filename
            if name.startswith(str(ROOT)):
                rel = str(Path(name).resolve().relative_to(ROOT))
                calls[f"{rel}:{frame.f_code.co_name}"] += 1
                if not visits or visits[-1] != rel:
                    visits.append(rel)

    sys.setprofile(profile)
    try:
        finetune_llm_selfsft([agent], env, iterations=1, prompts_per_iteration=1, sft_epochs=1, eval_samples=1,
                             verbose=False)
    finally:
        sys.setprofile(None)
    return visits, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the visits and counts to this file")
    args = parser.parse_args()
    visits, calls = trace()
    counts = Counter(visits)
    print(f"{len(visits)} visits to {len(counts)} files")
    for name, n in counts.most_common():
        print(f"{n:5d}  {name}")
    print("\npath:", " -> ".join(visits))
    if args.json:
        result = {"command": command_line(), "package": str(ROOT), "git": _git_head(), "cpu": cpu_model(),
                  "visits": visits, "counts": dict(counts.most_common()), "calls": dict(sorted(calls.items()))}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def _git_head() -> str:
    import subprocess

    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
