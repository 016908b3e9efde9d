"""A SelfSFT → DPO → GRPO chain on the embedded model and the capitals task, held-out reward after each stage.

1. **SelfSFT**: ``finetune_llm_selfsft`` on the capitals train prompts (replay and a light KL, as in
   ``configs/capitals.yaml``). Its ``on_scored`` hook (:func:`agilerl_selfsft.export.pairs.pair_writer`)
   keeps the best-vs-worst completions of every prompt with a reward spread as DPO pairs:
   ``RUN/selfsft/pairs/iteration_NNNN.jsonl``.
2. **DPO**: AgileRL's ``DPO``, started from the SelfSFT checkpoint with ``load_into`` (actor and reference
   = the SelfSFT actor), trained on those pairs through AgileRL's preference environment (``PreferenceGym``
   on agilerl 2.10, ``DatasetEnv(objective="preference")`` on 2.58: ``agilerl_adapter.dataset_env``).
3. **GRPO**: AgileRL's ``GRPO`` with the same reward (``contains``), started from the DPO result, on the
   train prompts: each step draws prompts (:class:`GRPOPrompts`: the chat-templated question as one
   unpadded row, the dict both releases' ``get_action`` take), samples a group per prompt, scores the
   completions (the tokens the action mask marks) and learns. AgileRL's own prompt environments differ
   between the releases (2.10's ``ReasoningGym``, 2.58's ``RolloutHarness``); this is the part both share.
   Two AgileRL 2.10.0 behaviours are corrected, both as plain settings: its generation config has no stop
   token, so it is given the chat template's end of turn (``<|im_end|>``); and each prompt gets its token
   length as ``initial_prompt_len``, without which 2.10's GRPO counts prompt tokens as actions (notes,
   pitfall 13; 2.58 masks the prompt itself).

Each stage is saved with :func:`agilerl_selfsft.training.checkpoints.save_iteration` (AgileRL's
``save_llm_checkpoint`` plus a ``selfsft.json`` manifest), so the next stage loads it with ``load_into`` and
the evaluator with ``load_adapters``. Evaluation (:func:`agilerl_selfsft.training.evaluation.evaluate`): the 40
held-out capitals, ``eval_samples`` samples each at T=0.8 (mean reward) and one greedy answer each.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/chain_selfsft_dpo_grpo.py           # full (~15 min, 2 threads)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/chain_selfsft_dpo_grpo.py --quick   # tiny settings (~2 min)
    OMP_NUM_THREADS=2 .venv-258/bin/python benchmarks/chain_selfsft_dpo_grpo.py       # the same on agilerl 2.58

The full run writes ``benchmarks/results/chain/chain.{json,md}`` (on agilerl 2.58: ``chain_agilerl258.*``); a
quick run writes them into its run dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the sibling module
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # and the library of this checkout

import agilerl_selfsft  # noqa: E402,F401  (before agilerl: it applies the agilerl 2.10.0 fixes)
import torch  # noqa: E402
from agilerl.algorithms import DPO, GRPO  # noqa: E402
from machine import command_line, environment_markdown, machine_info, machine_load, peak_rss_mib  # noqa: E402
from peft import LoraConfig  # noqa: E402

from agilerl_selfsft import SelfSFT, SelfSFTGym, finetune_llm_selfsft, load_into, load_model, load_tasks  # noqa: E402
from agilerl_selfsft.agilerl_adapter import AGILERL_258, AGILERL_VERSION, dataset_env, next_batch  # noqa: E402
from agilerl_selfsft.data.chat import turn_end_token_ids  # noqa: E402
from agilerl_selfsft.data.tasks import CAPITALS_DIR  # noqa: E402
from agilerl_selfsft.rewards import contains  # noqa: E402
from agilerl_selfsft.export.pairs import load_pairs_dataset, pair_writer  # noqa: E402
from agilerl_selfsft.samples import Task  # noqa: E402
from agilerl_selfsft.training.checkpoints import load_adapters, save_iteration  # noqa: E402
from agilerl_selfsft.training.evaluation import evaluate  # noqa: E402

MODEL = "smollm2-135m-instruct"
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "chain"


@dataclass
class Settings:
    """Sizes of every stage. ``Settings()`` is the full run; :meth:`quick` a smoke-test-sized one."""

    iterations: int = 2  # SelfSFT iterations
    prompts_per_iteration: int = 32
    num_generations: int = 4  # K (SelfSFT) and group size (GRPO)
    max_new_tokens: int = 32
    temperature: float = 0.8
    sft_lr: float = 2e-4
    sft_batch_size: int = 16
    sft_epochs: int = 2
    kl_coef: float = 0.05
    pairs_per_prompt: int = 2
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    dpo_batch_size: int = 8
    dpo_epochs: int = 2  # passes over the pairs
    grpo_lr: float = 5e-5
    grpo_beta: float = 0.01
    grpo_steps: int = 4
    grpo_prompts_per_step: int = 8
    grpo_batch_size: int = 16  # rows per GRPO optimizer step (AgileRL's default)
    eval_prompts: int = 40  # the first N held-out capitals (40 = all)
    eval_samples: int = 4
    lora_r: int = 16
    seed: int = 42

    @classmethod
    def quick(cls) -> Settings:
        return cls(iterations=1, prompts_per_iteration=24, max_new_tokens=32, sft_epochs=1, dpo_batch_size=4,
                   dpo_epochs=1, grpo_steps=1, grpo_prompts_per_step=2, eval_prompts=8, eval_samples=2)


def lora(s: Settings) -> LoraConfig:
    return LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def fresh_model() -> Any:
    """A fresh copy of the base weights for each agent (AgileRL wraps the model it is given in place)."""
    return load_model(MODEL, dtype=torch.float32)[0]


class GRPOPrompts:
    """GRPO's prompts and rewards: shuffled passes over the tasks, ``per_step`` prompts a step.

    A prompt is what ``GRPO.get_action`` takes on both releases: one dict per prompt with the chat-templated
    question as an unpadded ``input_ids`` row, its ``attention_mask``, and ``initial_prompt_len`` (its length).
    """

    def __init__(self, tasks: list[Task], tokenizer: Any, per_step: int, seed: int) -> None:
        self.tasks, self.tokenizer, self.per_step = tasks, tokenizer, per_step
        self.rng = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> tuple[list[Task], list[dict[str, Any]]]:
        """The next step's tasks and their prompt dicts."""
        tasks = []
        while len(tasks) < self.per_step:
            if not self.order:
                self.order = torch.randperm(len(self.tasks), generator=self.rng).tolist()
            tasks.append(self.tasks[self.order.pop()])
        prompts = []
        for task in tasks:
            ids = self.tokenizer.apply_chat_template(task.messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"]
            prompts.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "initial_prompt_len": ids.shape[1]})
        return tasks, prompts

    def rewards(self, tasks: list[Task], ids: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        """``contains`` of every completion (the tokens its action mask marks): ``(prompts, group)``."""
        out = []
        for task, group_ids, group_masks in zip(tasks, ids, masks, strict=True):
            texts = [self.tokenizer.decode(row[1:][mask.bool()], skip_special_tokens=True)
                     for row, mask in zip(group_ids, group_masks, strict=True)]
            out.append(contains([task.prompt] * len(texts), texts, [task.columns["answer"]] * len(texts)))
        return torch.tensor(out, dtype=torch.float32)


def run_chain(s: Settings, run_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three stages and evaluate after each; returns the results (also written to ``run_dir``)."""
    run_dir = Path(run_dir)
    train = load_tasks(CAPITALS_DIR / "train.jsonl")
    held_out = load_tasks(CAPITALS_DIR / "eval.jsonl")[: s.eval_prompts]
    timings: dict[str, float] = {}
    stages: list[dict[str, Any]] = []
    start = time.perf_counter()

    def add_stage(name: str, ev: dict[str, float], seconds: float, what: str) -> None:
        stages.append({"stage": name, "eval_reward": ev["eval_reward"], "eval_reward_greedy": ev["eval_reward_greedy"],
                       "eval_solved": ev["eval_solved"], "eval_seconds": round(ev["eval_seconds"], 1),
                       "stage_seconds": round(seconds, 1), "what": what})
        log(f"[{name}] held-out reward {ev['eval_reward']:.3f} (greedy {ev['eval_reward_greedy']:.3f}); "
            f"stage {seconds:.0f} s")

    def evaluate_stage(name: str, checkpoint: Path, t0: float, what: str) -> float:
        """Evaluate a stage's checkpoint with the SelfSFT evaluator; returns the stage's training seconds."""
        train_seconds = time.perf_counter() - t0
        torch.manual_seed(s.seed)
        load_adapters(agent, checkpoint)
        add_stage(name, evaluate(agent, env, s.eval_samples, True), time.perf_counter() - t0, what)
        return train_seconds

    # ---- stage 1: SelfSFT (its iteration 0 is the base model's evaluation) ----
    log(f"[selfsft] {s.iterations} iteration(s) x {s.prompts_per_iteration} prompts x K={s.num_generations}")
    model, tokenizer = load_model(MODEL, dtype=torch.float32)
    agent = SelfSFT(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
                    tokenizer=tokenizer, lora_config=lora(s), lr=s.sft_lr, batch_size=s.sft_batch_size,
                    num_generations=s.num_generations, sampling_temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                    kl_coef=s.kl_coef, seed=s.seed, gradient_checkpointing=False)
    env = SelfSFTGym(train, held_out, tokenizer, "contains", data_batch_size_per_gpu=s.sft_batch_size,
                     threshold=1.0, replay_capacity=128, replay_ratio=1.0, seed=s.seed)
    t0 = time.perf_counter()
    _, history = finetune_llm_selfsft(
        [agent], env, iterations=s.iterations, prompts_per_iteration=s.prompts_per_iteration, sft_epochs=s.sft_epochs,
        eval_samples=s.eval_samples, checkpoint_path=run_dir / "selfsft", seed=s.seed, verbose=False,
        on_scored=pair_writer(run_dir / "selfsft", pairs_per_prompt=s.pairs_per_prompt),
    )
    selfsft_seconds = time.perf_counter() - t0
    base_seconds = history[0]["wall_seconds"]
    add_stage("base", history[0], base_seconds, "SmolLM2-135M-Instruct as shipped")
    add_stage("selfsft", history[-1], selfsft_seconds - base_seconds,
              f"{s.iterations} SelfSFT iterations (kept {int(sum(r['kept'] for r in history[1:]))} samples)")
    selfsft_ckpt = run_dir / "selfsft" / "checkpoints" / "latest"

    # ---- stage 2: DPO on the pairs SelfSFT's own samples gave ----
    t0 = time.perf_counter()
    pairs = load_pairs_dataset(run_dir / "selfsft" / "pairs", tokenizer)
    steps = s.dpo_epochs * -(-len(pairs) // s.dpo_batch_size)
    log(f"[dpo] {len(pairs)} pairs; {steps} steps of batch {s.dpo_batch_size}")
    torch.manual_seed(s.seed)
    dpo = DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=fresh_model(),
              lora_config=lora(s), lr=s.dpo_lr, beta=s.dpo_beta, batch_size=s.dpo_batch_size,
              gradient_checkpointing=False, seed=s.seed)
    load_into(dpo, selfsft_ckpt)
    pref_env = dataset_env(pairs, pairs, tokenizer, "preference", data_batch_size_per_gpu=s.dpo_batch_size, seed=s.seed)
    batch, dpo_log = pref_env.reset(), []
    for step in range(steps):
        m = dpo.learn(batch)
        dpo_log.append({"step": step + 1, **{k: round(float(v), 5) for k, v in m.items()}})
        log(f"[dpo] step {step + 1}/{steps}: loss {m['loss']:.4f}, margin {m['chosen_reward'] - m['rejected_reward']:.4f}")
        batch = next_batch(pref_env)
    dpo_ckpt = save_iteration(dpo, run_dir / "dpo", 1, info={"stage": "dpo"})
    del dpo
    gc.collect()
    dpo_train_seconds = evaluate_stage("dpo", dpo_ckpt, t0, f"DPO, {steps} steps on {len(pairs)} on-policy pairs")

    # ---- stage 3: GRPO from the DPO result ----
    t0 = time.perf_counter()
    log(f"[grpo] {s.grpo_steps} steps x {s.grpo_prompts_per_step} prompts x group {s.num_generations}")
    torch.manual_seed(s.seed)
    grpo = GRPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=fresh_model(),
                lora_config=lora(s), lr=s.grpo_lr, beta=s.grpo_beta, group_size=s.num_generations,
                batch_size=s.grpo_batch_size, max_output_tokens=s.max_new_tokens,
                temperature=s.temperature, top_p=1.0, top_k=0, gradient_checkpointing=False, seed=s.seed)
    load_into(grpo, dpo_ckpt)
    grpo.generation_config.eos_token_id = turn_end_token_ids(tokenizer)  # stop at <|im_end|> as SelfSFT does
    grpo_prompts, grpo_log = GRPOPrompts(train, tokenizer, s.grpo_prompts_per_step, s.seed), []
    for step in range(s.grpo_steps):
        tasks, prompts = grpo_prompts.next()
        action = grpo.get_action(prompts)
        ids, masks = action[0], action[1]  # completion_ids (2.10) / token_ids (2.58), action_masks
        rewards = grpo_prompts.rewards(tasks, ids, masks)
        m = grpo.learn((ids, masks, rewards))
        grpo_log.append({"step": step + 1, "train_reward": round(float(rewards.mean()), 4),
                         **{k: round(float(v), 5) for k, v in m.items()}})
        log(f"[grpo] step {step + 1}/{s.grpo_steps}: train reward {grpo_log[-1]['train_reward']:.3f}, loss {m['loss']:.4f}")
    grpo_ckpt = save_iteration(grpo, run_dir / "grpo", 1, info={"stage": "grpo"})
    del grpo
    gc.collect()
    grpo_train_seconds = evaluate_stage(
        "grpo", grpo_ckpt, t0, f"GRPO, {s.grpo_steps} steps x {s.grpo_prompts_per_step} prompts x group {s.num_generations}"
    )

    timings.update(base=base_seconds, selfsft_train=selfsft_seconds - base_seconds - history[-1]["eval_seconds"],
                   dpo_train=dpo_train_seconds, grpo_train=grpo_train_seconds, total=time.perf_counter() - start)
    result = {
        "settings": dataclasses.asdict(s),
        "stages": stages,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "selfsft_history": [{k: r.get(k) for k in ("iteration", "eval_reward", "eval_reward_greedy", "train_reward", "kept", "loss", "wall_seconds")} for r in history],
        "pairs_per_iteration": {p.name: sum(1 for _ in p.open()) for p in sorted((run_dir / "selfsft" / "pairs").glob("*.jsonl"))},
        "dpo_steps": dpo_log,
        "grpo_steps": grpo_log,
        "checkpoints": {"selfsft": str(selfsft_ckpt.resolve()), "dpo": str(dpo_ckpt), "grpo": str(grpo_ckpt)},
    }
    (run_dir / "chain.json").write_text(json.dumps(result, indent=2))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The stage table of a :func:`run_chain` result (plus machine and command when the result has them)."""
    s = result["settings"]
    lines = [
        f"# SelfSFT → DPO → GRPO on the embedded model (capitals), agilerl {result.get('agilerl', '2.10.0')}",
        "",
        f"Held-out: the first {s['eval_prompts']} held-out capitals; sampled = mean reward of {s['eval_samples']} "
        f"samples per prompt at T={s['temperature']}, greedy = one greedy answer per prompt. Reward: `contains`. "
        "One seed: read differences under ~0.05 as noise.",
        "",
        "| stage | held-out reward (sampled) | greedy | prompts solved | stage wall s (incl. eval) | eval s | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["stages"]:
        lines.append(f"| {r['stage']} | {r['eval_reward']:.3f} | {r['eval_reward_greedy']:.3f} | {r['eval_solved']:.3f} | "
                     f"{r['stage_seconds']:.0f} | {r['eval_seconds']:.0f} | {r['what']} |")
    t = result["seconds"]
    lines += [
        "",
        f"Total wall time: {t['total']:.0f} s ({t['total'] / 60:.1f} min). Training only: SelfSFT {t['selfsft_train']:.0f} s "
        f"(generation, selection, learning, and its evaluation after each iteration but the last), DPO {t['dpo_train']:.0f} s, "
        f"GRPO {t['grpo_train']:.0f} s.",
        "",
        "Pairs per SelfSFT iteration: " + ", ".join(f"{k}: {v}" for k, v in result["pairs_per_iteration"].items()),
        "",
        "How each stage starts and runs:",
        "",
        "- SelfSFT: `finetune_llm_selfsft` (threshold 1.0, replay 128 at ratio 1.0, kl_coef as below); its "
        "`on_scored` hook writes the best-vs-worst pairs of every prompt with a reward spread.",
        "- DPO: AgileRL `DPO` (its defaults otherwise: DPO + NLL on chosen with nll_alpha 1.0, max_grad_norm 0.1), "
        "`load_into` from the SelfSFT checkpoint (actor and reference = SelfSFT actor), batches from AgileRL's "
        "preference environment over the pairs (`PreferenceGym` on 2.10, `DatasetEnv(objective=\"preference\")` on "
        "2.58; chat-templated prompt, answers with their `<|im_end|>`).",
        "- GRPO: AgileRL `GRPO` (same `contains` reward, train prompts as chat-templated rows, a group per prompt), "
        "`load_into` from the DPO checkpoint. Two settings differ from AgileRL 2.10.0 as shipped: generation stops "
        "at `<|im_end|>` (its generation config has no stop token), and every prompt gets `initial_prompt_len` so "
        "only completion tokens are actions (as shipped, prompt tokens are trained on too).",
        "- Every stage is evaluated by loading its checkpoint's actor into one SelfSFT evaluator (`load_adapters`).",
        "",
        "Settings: `" + json.dumps(s) + "`",
        "",
    ]
    if "peak_rss_mib" in result:
        lines += [f"Peak resident memory: {result['peak_rss_mib']} MiB; OMP_NUM_THREADS={result['omp_num_threads']}.", ""]
    if "machine" in result:
        lines += environment_markdown(result)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the chain works (~2 min)")
    parser.add_argument("--run-dir", default=None, help="checkpoints and pairs (default runs/chain or runs/chain_quick)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.quick() if args.quick else Settings()
    run_dir = Path(args.run_dir or ("runs/chain_quick" if args.quick else "runs/chain"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"run dir {run_dir} is not empty; remove it or pass another --run-dir")
    before = machine_load()
    started = time.perf_counter()
    result = run_chain(settings, run_dir, log=lambda msg: print(f"[chain {time.perf_counter() - started:6.0f}s] {msg}", flush=True))
    result.update(agilerl=str(AGILERL_VERSION), command=command_line(), machine=machine_info(args.threads),
                  machine_load={"before": before, "after": machine_load()},
                  date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  peak_rss_mib=round(peak_rss_mib()), omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    out = run_dir if args.quick else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    name = "chain_agilerl258" if AGILERL_258 else "chain"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown(result))
    print("\n" + markdown(result).split("\n\nSettings")[0])
    print(f"\nresults: {out / f'{name}.json'}, {out / f'{name}.md'}")


if __name__ == "__main__":
    main()
