"""The tool-calling capital agent on the embedded model: how often it calls the tool right, before and after SelfSFT.

The agent is :mod:`agilerl_selfsft.examples.capital_agent` (a ``country_capital_lookup`` tool in the Hermes
format, two example exchanges, at most 3 policy turns; reward 0.5 for a correct first tool call + 0.5 for a
final answer that names the capital). The loop is :func:`agilerl_selfsft.finetune_llm_selfsft` with the agent
on the environment: each iteration rolls the agent out K times on ``--prompts`` train countries (every turn of
all live conversations in one generate call), keeps the trajectories with reward 1.0 (a correct tool call and
a right answer), and learns every reply the policy wrote in them (tool calls and final answers), never the
system, example, user or tool turns.

Measured on the 40 held-out countries at every iteration (iteration 0 = the base model), from the info the
agent returns: ``tool_called`` (some reply parsed as a tool call), ``correct_tool_call`` (the first call names
the tool with the task's country), ``tool_call_error`` (a ``<tool_call>`` that could not be parsed),
``answer_correct`` and the reward, each for ``--eval-samples`` samples per country at T=``--temperature`` and
for one greedy rollout.

Run from the repository root (about 10 minutes on 2 CPU cores at 1 thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/capital_agent.py

Writes ``capital_agent.json`` and ``capital_agent.md`` to ``--output-dir`` (default
``benchmarks/results/capital_agent``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for ``machine`` when run as a script

import agilerl_selfsft  # noqa: F401, I001  (before anything from agilerl)
from agilerl_selfsft import SelfSFT, SelfSFTGym, finetune_llm_selfsft, load_model
from agilerl_selfsft.examples.capital_agent import capital_agent, eval_tasks, train_tasks

import argparse
import json
import logging
import tempfile
import time
from datetime import datetime, timezone

import torch
from peft import LoraConfig

from machine import command_line, environment_markdown, machine_info, machine_load

MEASURES = ("tool_called", "correct_tool_call", "tool_call_error", "answer_correct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16, help="train countries per iteration")
    parser.add_argument("-k", "--num-generations", type=int, default=4, help="conversations per country")
    parser.add_argument("--eval-samples", type=int, default=2, help="sampled held-out conversations per country")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="per policy turn")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--eval-countries", type=int, default=None, help="first N held-out countries (smoke runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selection", choices=("threshold", "random"), default="threshold",
                        help="threshold: keep reward 1.0; random: the control, as many trajectories drawn at random")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/capital_agent"))
    parser.add_argument("--summarize", action="store_true",
                        help="only tabulate every capital_agent.json in --output-dir and its subfolders (summary.md)")
    args = parser.parse_args()
    if args.summarize:
        (args.output_dir / "summary.md").write_text(summary(args.output_dir))
        print(summary(args.output_dir))
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    load_before = machine_load()
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32)
    agent = SelfSFT(
        pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model, tokenizer=tokenizer,
        lora_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM",
                               lora_dropout=0.0),
        lr=args.lr, batch_size=args.batch_size, num_generations=args.num_generations, sampling_temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, gradient_checkpointing=False, seed=args.seed,
    )
    env = SelfSFTGym(train_tasks(), eval_tasks()[: args.eval_countries], tokenizer, agent=capital_agent, selection=args.selection,
                     threshold=1.0, data_batch_size_per_gpu=args.batch_size, seed=args.seed)
    with tempfile.TemporaryDirectory() as run_dir:
        _, history = finetune_llm_selfsft(
            [agent], env, iterations=args.iterations, prompts_per_iteration=args.prompts, sft_epochs=args.sft_epochs,
            eval_samples=args.eval_samples, eval_greedy=True, checkpoint_path=run_dir, save_elite=False,
            seed=args.seed,
        )
    seconds = time.perf_counter() - start
    rows = [{k: v for k, v in row.items() if k != "population"} for row in history]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(args.threads),
        "machine_load": {"before": load_before, "after": machine_load()},
        "settings": vars(args) | {"output_dir": str(args.output_dir), "model": "smollm2-135m-instruct (fp32)",
                                  "lora": "r16 alpha32 all-linear", "selection": f"{args.selection} 1.0",
                                  "held_out_countries": len(env.eval_tasks), "train_countries": len(env.train_tasks)},
        "seconds": round(seconds, 1),
        "iterations": rows,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "capital_agent.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.output_dir / "capital_agent.md").write_text(markdown(result))
    print(markdown(result))


def _f(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    s, rows = result["settings"], result["iterations"]
    lines = [
        "# Capital agent: tool calls before and after SelfSFT (embedded SmolLM2-135M-Instruct)",
        "",
        f"Agent: `agilerl_selfsft/examples/capital_agent.py` (tool `country_capital_lookup`, Hermes `<tool_call>` "
        f"format in the system prompt, 2 example exchanges, at most 3 policy turns). {s['iterations']} iterations x "
        f"{s['prompts']} train countries x K={s['num_generations']} conversations; selection {s['selection']} "
        f"(threshold: keep reward 1.0, a correct tool call and a right answer; random: as many, drawn at random); learn every policy reply in them ({s['sft_epochs']} epochs, batch "
        f"{s['batch_size']}, lr {s['lr']}, LoRA r16). Held out: {s['held_out_countries']} countries, "
        f"{s['eval_samples']} samples each at T={s['temperature']} plus one greedy rollout. "
        f"Total wall time {result['seconds'] / 60:.1f} min.",
    ]
    for title, suffix in (("sampled (share of conversations)", ""), ("greedy (one conversation per country)", "_greedy")):
        lines += ["", f"## Held-out, {title}", "",
                  "| iteration | tool called | correct tool call | unparseable call | answer correct | reward |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['iteration']} | " + " | ".join(_f(r.get(f"eval_{m}{suffix}")) for m in MEASURES)
                         + f" | {_f(r[f'eval_reward{suffix}'])} |")
    lines += ["", "## Training (the iteration's own rollouts, sampled)", "",
              "| iteration | tool called | correct tool call | train reward | kept | loss | wall seconds |",
              "|---|---|---|---|---|---|---|"]
    for r in rows[1:]:
        lines.append(f"| {r['iteration']} | {_f(r.get('train_tool_called'))} | {_f(r.get('train_correct_tool_call'))} "
                     f"| {_f(r['train_reward'])} | {int(r['kept'])} | {_f(r['loss'])} | {_f(r['wall_seconds'])} |")
    lines += [""] + environment_markdown(result)
    return "\n".join(lines) + "\n"


def summary(root: Path) -> str:
    """Held-out rates per iteration, per run and as mean ± std over the seeds of each selection."""
    import numpy as np

    runs = [json.loads(p.read_text()) for p in sorted(root.glob("**/capital_agent.json"))]
    runs.sort(key=lambda r: (r["settings"].get("selection", "threshold 1.0"), r["settings"]["seed"]))
    keys = [("eval_correct_tool_call", "correct tool call, sampled"), ("eval_correct_tool_call_greedy", "greedy"),
            ("eval_answer_correct", "answer correct, sampled"), ("eval_reward", "reward, sampled")]
    lines = ["# Capital agent: every run (held-out countries)", "",
             "| selection | seed | iteration | " + " | ".join(name for _, name in keys) + " |",
             "|---" * (3 + len(keys)) + "|"]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        selection = run["settings"].get("selection", "threshold 1.0").split()[0]
        groups.setdefault(selection, []).append(run)
        for row in run["iterations"]:
            lines.append(f"| {selection} | {run['settings']['seed']} | {row['iteration']} | "
                         + " | ".join(_f(row.get(k)) for k, _ in keys) + " |")
    lines += ["", "## Mean ± std over seeds", "",
              "| selection | seeds | iteration | " + " | ".join(name for _, name in keys) + " |",
              "|---" * (3 + len(keys)) + "|"]
    for selection, group in groups.items():
        for i in range(min(len(r["iterations"]) for r in group)):
            cells = []
            for key, _ in keys:
                values = np.array([r["iterations"][i][key] for r in group], dtype=float)
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values[0]:.3f}")
            lines.append(f"| {selection} | {len(group)} | {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
