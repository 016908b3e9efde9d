"""Peak memory of a population on the embedded model: one agent, 4 sharing a base, 4 with AgileRL's clone.

Goal (issue 4): a population of 4 peaks at <= 1.5x the memory of one agent (AgileRL's own clone, a full
model copy per member, gives ~5x). Each setting runs in a fresh process: load SmolLM2-135M-Instruct (fp32),
build the population, run 2 self-training iterations on capitals (generate, score, select, learn, evaluate
for every member, then tournament selection + mutations between the iterations, which clones members).
The peak resident memory (``ru_maxrss``) of that process is reported, with the model load alone as a floor.

    .venv/bin/python benchmarks/population_memory.py [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the sibling module

from machine import command_line, environment_markdown, machine_info, machine_load, peak_rss_mib  # noqa: E402

SETTINGS = {"one agent": (1, "shared"), "4 agents, shared base (SelfSFT)": (4, "shared"), "4 agents, AgileRL clone": (4, "agilerl")}


def member(size: int, clone: str, threads: int) -> dict:
    """One measurement, in this (fresh) process."""
    import agilerl_selfsft  # noqa: F401  (before agilerl)
    import torch
    from agilerl.algorithms.core.registry import HyperparameterConfig, RLParameter
    from agilerl.algorithms.sft import SFT
    from agilerl.hpo.mutation import Mutations
    from agilerl.hpo.tournament import TournamentSelection
    from peft import LoraConfig

    from agilerl_selfsft import SelfSFT, SelfSFTGym, finetune_llm_selfsft, load_tasks
    from agilerl_selfsft.data.tasks import CAPITALS_DIR
    from agilerl_selfsft.models import load_model

    torch.set_num_threads(threads)
    if clone == "agilerl":  # AgileRL 2.10.0's clone: a full copy of the model per member
        SelfSFT._clone_actor_network = SFT._clone_actor_network
    model, tokenizer = load_model("smollm2-135m-instruct")
    loaded = peak_rss_mib()
    pop = SelfSFT.population(
        size, pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
        tokenizer=tokenizer, lora_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        lr=2e-4, batch_size=8, num_generations=4, max_new_tokens=24, gradient_checkpointing=False,
        hp_config=HyperparameterConfig(lr=RLParameter(min=1e-5, max=1e-3), sampling_temperature=RLParameter(min=0.5, max=1.2)),
    )
    built = peak_rss_mib()
    env = SelfSFTGym(load_tasks(CAPITALS_DIR / "train.jsonl"), load_tasks(CAPITALS_DIR / "eval.jsonl")[:8], tokenizer,
                     "contains", data_batch_size_per_gpu=8, threshold=1.0)
    evolve = size > 1
    start = time.perf_counter()
    _, history = finetune_llm_selfsft(
        pop, env, iterations=2, prompts_per_iteration=8, sft_epochs=1, eval_samples=1, eval_greedy=False,
        tournament=TournamentSelection(2, True, size) if evolve else None,
        mutation=Mutations(0.5, 0, 0, 0, 0, 0.5, rand_seed=0) if evolve else None, verbose=False,
    )
    return {"after_model_load_mib": round(loaded, 1), "after_build_mib": round(built, 1), "peak_mib": round(peak_rss_mib(), 1),
            "seconds": round(time.perf_counter() - start, 1), "final_eval_reward": history[-1]["eval_reward"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="benchmarks/results")
    parser.add_argument("--member", nargs=2, help=argparse.SUPPRESS)  # internal: SIZE CLONE, run in a child
    args = parser.parse_args()
    if args.member:
        print(json.dumps(member(int(args.member[0]), args.member[1], args.threads)))
        return
    before = machine_load()
    rows = {}
    for name, (size, clone) in SETTINGS.items():
        proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--member", str(size), clone],
                              capture_output=True, text=True, check=True)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, rows[name], flush=True)
    one = rows["one agent"]["peak_mib"]
    for row in rows.values():
        row["vs_one_agent"] = round(row["peak_mib"] / one, 2)
    result = {"machine": machine_info(args.threads), "machine_load": {"before": before, "after": machine_load()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command_line(), "settings": rows}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "population_memory.json").write_text(json.dumps(result, indent=2))
    lines = ["# Population memory (SmolLM2-135M-Instruct, fp32, LoRA r16 all-linear, 2 iterations with evolution)", "",
             "| setting | after model load (MiB) | after build (MiB) | peak RSS (MiB) | × one agent | wall (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {n} | {r['after_model_load_mib']} | {r['after_build_mib']} | {r['peak_mib']} | {r['vs_one_agent']} | {r['seconds']} |"
              for n, r in rows.items()]
    lines += ["", "Goal: 4 agents ≤ 1.5× one agent.", "", *environment_markdown(result)]
    (out / "population_memory.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
