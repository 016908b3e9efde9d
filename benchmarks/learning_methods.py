"""One run of the learning benchmark (``learning.py``): one task, one seed, one method, in this process.

A run trains from the base model, one iteration after another, until its training clock reaches the budget
(it stops at the first iteration boundary at or after it), and evaluates the held-out prompts whenever another
``eval_every_s`` training seconds have passed, and at the end; evaluation is off the clock. Every method is
evaluated by the same code: :func:`agilerl_selfsft.training.evaluation.evaluate` on a :class:`SelfSFT` built by
:func:`selfsft_agent` (one greedy answer and ``eval_samples`` samples at ``eval_temperature`` per prompt, torch
seeded with the run's seed first). The SFT methods evaluate their own agent; GRPO's actor adapter is saved
(``save_iteration``) and loaded into such an agent (``load_adapters``) before each evaluation.

One iteration of each method:

- ``selfsft``: sample K completions for the next ``prompts_per_iteration`` train prompts, score them, keep
  those with reward >= 1 (``selection="threshold"``), then ``sft_epochs`` passes of response-only SFT on them;
- ``random``: the same, keeping as many samples as the threshold would, drawn at random (``selection="random"``);
- ``gold_sft``: the same SFT on the gold answers of the next ``prompts_per_iteration`` train prompts;
- ``vote`` / ``judge``: ``selfsft`` trained on a reward that needs no checker (:data:`TRAIN_REWARDS`), while the
  task's checker still scores the held-out split (``eval_reward``). ``vote`` is ``majority_vote`` on
  arithmetic with the train answers moved out of the ``answer`` column (only its ``label_accuracy`` metric reads
  them, under another name); ``judge`` is the base model judging its own capitals answers on the 1-10 rubric
  (``model: policy``: the frozen reference adapter), keeping those it scores 6 or more;
- ``difficulty``: ``selfsft`` with difficulty-aware sampling (:data:`DIFFICULTY`: a prompt all K samples
  solved is skipped afterwards, one never solved is sampled a quarter of the time, and a second draw of fresh
  prompts tops the iteration up to ``prompts_per_iteration`` informative ones);
- ``restart``: ``selfsft`` with ``restart_from_base`` (ReST-EM): fresh adapters every iteration, trained on every
  sample selected so far;
- ``top1`` / ``shorter``: ``selfsft`` keeping the best sample per prompt (``top_k``, k=1, threshold 1), and the
  same preferring the shorter among equally rewarded ones (``prefer_shorter``);
- ``efficient``: ``selfsft`` with the selection section of the config's ``preset: efficient``
  (:data:`agilerl_selfsft.config.PRESETS`, read here, so the arm is whatever the preset is);
- ``grpo_shipped`` / ``grpo_fixed``: one call of AgileRL 2.10.0's ``finetune_llm_reasoning`` with
  ``max_steps=grpo_prompts_per_step`` (one GRPO step: that many prompts x K completions) on a ReasoningGym
  over the same prompts and reward. ``grpo_fixed`` sets ``initial_prompt_len`` on every prompt (notes, pitfall
  13), ``grpo_shipped`` does not. Both stop generating at the end of the assistant turn (``<|im_end|>``).

Counted: ``gen_tokens``, tokens sampled for training (each row through its first end-of-turn token; for GRPO
from the completion ids); ``trained_tokens``, loss tokens summed over learn calls (SFT: the batches'
``loss_mask``, i.e. each epoch counts again; GRPO: its own ``action_masks``, which as shipped include prompt
tokens).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_methods.py '{"task": "capitals", "seed": 0,
        "method": "selfsft", "settings": {}}' OUT.json      # one run, as learning.py starts it
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the sibling module
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # and the library of this checkout

import agilerl_selfsft  # noqa: E402,F401  (before agilerl: it applies the agilerl 2.10.0 fixes)
import torch  # noqa: E402
from agilerl.algorithms import GRPO  # noqa: E402
from agilerl.llm_envs import ReasoningGym  # noqa: E402
from agilerl.training.llm.reasoning import finetune_llm_reasoning  # noqa: E402
from datasets import Dataset  # noqa: E402
from machine import peak_rss_mib  # noqa: E402
from peft import LoraConfig  # noqa: E402

from agilerl_selfsft import SelfSFT, SelfSFTGym, load_model, load_tasks  # noqa: E402
from agilerl_selfsft.algorithm.restart import restart_from_base  # noqa: E402
from agilerl_selfsft.config import PRESETS  # noqa: E402
from agilerl_selfsft.data.chat import turn_end_token_ids  # noqa: E402
from agilerl_selfsft.data.tasks import ARITHMETIC_DIR, CAPITALS_DIR, CODE_DIR  # noqa: E402
from agilerl_selfsft.rewards import resolve_reward, score  # noqa: E402
from agilerl_selfsft.env.curriculum import sample_iteration  # noqa: E402
from agilerl_selfsft.samples import Scored, Task  # noqa: E402
from agilerl_selfsft.training.checkpoints import load_adapters, save_iteration  # noqa: E402
from agilerl_selfsft.training.evaluation import evaluate  # noqa: E402

MODEL = "smollm2-135m-instruct"
TASKS = {"capitals": (CAPITALS_DIR, "contains"), "arithmetic": (ARITHMETIC_DIR, "first_number"),
         "code": (CODE_DIR, "python_tests")}
METHODS = ("selfsft", "random", "grpo_shipped", "grpo_fixed", "gold_sft", "vote", "judge", "difficulty", "restart",
           "top1", "shorter", "efficient")
SFT_METHODS = ("selfsft", "random", "gold_sft", "vote", "judge", "difficulty", "restart", "top1", "shorter", "efficient")
DIFFICULTY = {"mastered": 1.0, "mastered_streak": 1, "recheck": 0.1, "unsolved_tries": 1, "unsolved_weight": 0.25,
              "max_draws": 2}
NEW_TOKENS = {"code": 160}  # max_new_tokens of a task whose answers are longer than the settings' (training and eval)
# Tasks whose rows cut off at max_new_tokens may still be kept: the model explains after its code block, and the
# reward ran the code, so a reply cut off in the explanation is still a right program.
KEEP_TRUNCATED = ("code",)
# The training reward (and selection threshold) of the methods that learn without the task's checker.
TRAIN_REWARDS = {"vote": ({"name": "majority_vote", "extract": "first_number", "min_agreement": 0.5,
                           "gold_column": "hidden_answer"}, 1.0),
                 "judge": ({"name": "judge", "model": "policy", "scale": [1, 10]}, 5 / 9)}  # a score of 6 or more
ONLY_ON = {"vote": ("arithmetic",), "judge": ("capitals",)}  # the tasks a method is run on (others: every task)


@dataclass
class Settings:
    """Everything a run depends on. ``Settings()`` is the full benchmark, :meth:`quick` a smoke test."""

    budget_s: float = 150.0  # training seconds per run (evaluation excluded)
    eval_prompts: int = 40  # the first N held-out prompts (40 = all, both tasks)
    eval_samples: int = 2  # sampled completions per held-out prompt (plus one greedy)
    eval_temperature: float = 0.8
    max_new_tokens: int = 32  # training and evaluation
    num_generations: int = 4  # K (SelfSFT, random) and group size (GRPO)
    temperature: float = 0.8  # training samples
    lr: float = 2e-4  # every method
    lora_r: int = 16
    eval_every_s: float | None = None  # training seconds between evaluations, defaults to budget_s / 4
    prompts_per_iteration: int = 16  # train prompts per iteration: selfsft, random, gold_sft
    train_prompts: int | None = None  # the first N train prompts only (None: all)
    sft_epochs: int = 2  # passes over an iteration's kept samples (selfsft, random, gold_sft)
    sft_batch_size: int = 16
    grpo_prompts_per_step: int = 8  # ReasoningGym's default batch: 8 prompts x K = 32 completions per GRPO step
    grpo_batch_size: int = 16  # GRPO micro-batch (AgileRL's default)
    grpo_beta: float = 0.001  # AgileRL's default

    @classmethod
    def quick(cls) -> Settings:
        return cls(budget_s=20.0, eval_prompts=8, eval_every_s=10.0, prompts_per_iteration=4, grpo_prompts_per_step=4)


def gym_selection(method: str) -> dict[str, Any]:
    """The selection keywords of ``SelfSFTGym`` for an SFT method (``efficient``: the preset's ``selection:``)."""
    if method == "efficient":
        section = dict(PRESETS["efficient"].get("selection", {}))
        return {"selection": section.pop("strategy", "threshold"), **section}
    return {"random": {"selection": "random"}, "top1": {"selection": "top_k", "top_k": 1},
            "shorter": {"selection": "top_k", "top_k": 1, "prefer_shorter": True}}.get(method, {"selection": "threshold"})


def lora(s: Settings) -> LoraConfig:
    return LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def selfsft_agent(s: Settings, seed: int) -> tuple[SelfSFT, Any]:
    """A SelfSFT agent on a fresh copy of the base model: the trainer of the SFT methods and every evaluator."""
    model, tokenizer = load_model(MODEL, dtype=torch.float32)
    agent = SelfSFT(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
                    tokenizer=tokenizer, lora_config=lora(s), lr=s.lr, batch_size=s.sft_batch_size,
                    num_generations=s.num_generations, sampling_temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                    seed=seed, gradient_checkpointing=False)
    return agent, tokenizer


def gold(task: Task) -> str:
    answer = task.columns["answer"]
    return str(answer[0] if isinstance(answer, list) else answer)


# ---- GRPO on a ReasoningGym ----
def reasoning_data(tasks: list[Task]) -> tuple[Dataset, list[dict[str, str]]]:
    """ReasoningGym's dataset (question = the last user turn) and the conversation template around it.

    ReasoningGym hands its reward function one ``answer`` per question; here that is the row's columns as JSON
    (code rows have ``tests`` and ``entry_point``, no ``answer``), which :func:`grpo_reward` reads back.
    """
    prefix = tasks[0].messages[:-1]
    if any(t.messages[:-1] != prefix for t in tasks):
        raise ValueError("ReasoningGym takes one conversation template: prompts must share the turns before the question")
    escaped = [{**m, "content": str(m["content"]).replace("{", "{{").replace("}", "}}")} for m in prefix]
    template = [*escaped, {"role": "user", "content": "{question}"}]
    columns = [json.dumps(t.columns) for t in tasks]
    return Dataset.from_dict({"question": [t.messages[-1]["content"] for t in tasks], "answer": columns}), template


def grpo_reward(reward_name: str) -> Any:
    """ReasoningGym's ``reward_fn(completion, answer, question)`` scoring with the task's reward, through the same
    :func:`agilerl_selfsft.rewards.score` as every other method (``answer``: the row's columns, as JSON)."""
    rewards = resolve_reward(reward_name)

    def reward_fn(completion: str, answer: str, question: str) -> float:
        columns = {key: [value] for key, value in json.loads(answer).items()}
        return score(rewards, [question], [completion], columns)[0]

    return reward_fn


class ChunkedReasoningGym(ReasoningGym):
    """A ReasoningGym that ``finetune_llm_reasoning`` can be called on repeatedly, a few steps at a time.

    ``finetune_llm_reasoning`` resets the environment with ``reset_dataloaders=True`` at every call, which would
    restart every call at the first batch of the (seeded) shuffle. Here only the first reset draws a batch;
    later ones return the batch the previous call's last ``step`` drew and never used, so the calls walk the
    dataset as one long run would. With ``set_prompt_len`` every prompt carries ``initial_prompt_len`` (its
    token length), so GRPO's action mask starts after the prompt. It also counts the tokens generated (per row
    through its first stop token, as :func:`agilerl_selfsft.generation.decode.sample` counts) and the rewards.
    """

    def __init__(self, *args: Any, set_prompt_len: bool = False, stop_ids: list[int] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_prompt_len = set_prompt_len
        self.stop_ids = torch.tensor(list(stop_ids))
        self.pending: list[dict[str, Any]] | None = None
        self.generated_tokens = 0
        self.prompts_seen: list[str] = []
        self.rewards_seen: list[float] = []

    def reset(self, reset_dataloaders: bool = False) -> list[dict[str, Any]]:
        if self.pending is None:
            return self._mark(super().reset(reset_dataloaders=reset_dataloaders))
        self.reset_called = True
        return self.pending  # questions/answers/last_tokenized_prompts still describe this batch

    def step(self, completions: list[torch.Tensor]) -> tuple[list[dict[str, Any]], torch.Tensor]:
        self.prompts_seen += list(self.questions)
        for group, prompt in zip(completions, self.last_tokenized_prompts, strict=True):
            new = group[:, prompt["input_ids"].shape[1]:]
            is_stop = torch.isin(new, self.stop_ids)
            stopped = is_stop.any(dim=1)
            self.generated_tokens += int(torch.where(stopped, is_stop.int().argmax(dim=1) + 1, new.shape[1]).sum())
        next_prompts, rewards = super().step(completions)
        self.rewards_seen += rewards.flatten().tolist()
        self.pending = self._mark(next_prompts)
        return self.pending, rewards

    def _mark(self, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.set_prompt_len:
            for p in prompts:
                p["initial_prompt_len"] = int(p["input_ids"].shape[1])  # one unpadded prompt per dict
        return prompts


# ---- one run ----
def run(task: str, seed: int, method: str, s: Settings) -> dict[str, Any]:
    """Train ``method`` on ``task`` from the base model until the budget, evaluating every ``eval_every_s``.

    ``method="base"`` only evaluates the untrained model (the t=0 point every method shares).
    """
    torch.set_num_threads(1)
    folder, reward_name = TASKS[task]
    s = dataclasses.replace(s, max_new_tokens=NEW_TOKENS.get(task, s.max_new_tokens))
    train, held_out = load_tasks(folder / "train.jsonl")[: s.train_prompts], load_tasks(folder / "eval.jsonl")[: s.eval_prompts]
    train_reward_spec, threshold = TRAIN_REWARDS.get(method, (reward_name, 1.0))
    if method == "vote":  # no train labels: majority_vote's label_accuracy alone reads them, under another name
        train = [dataclasses.replace(t, columns={"hidden_answer": t.columns["answer"]}) for t in train]
    started = time.perf_counter()
    agent, tokenizer = selfsft_agent(s, seed)  # the trainer (SFT methods) or the evaluator (GRPO)
    env = SelfSFTGym(train, held_out, tokenizer, train_reward_spec, data_batch_size_per_gpu=s.sft_batch_size,
                     threshold=threshold, seed=seed, eval_reward=reward_name, keep_truncated=task in KEEP_TRUNCATED,
                     accumulate=method == "restart", sampling=DIFFICULTY if method == "difficulty" else None,
                     **gym_selection(method))
    points: list[dict[str, Any]] = []
    totals = {"train_s": 0.0, "gen_tokens": 0, "trained_tokens": 0, "iterations": 0}
    extra: dict[str, Any] = {}

    def evaluate_point(chunk: list[dict[str, Any]]) -> None:
        torch.manual_seed(seed)  # the same sampling noise for every method's evaluation
        ev = evaluate(agent, env, s.eval_samples, True, temperature=s.eval_temperature)
        rewards = [c["train_reward"] for c in chunk if c.get("train_reward") is not None]
        losses = [c["loss"] for c in chunk if c.get("loss") is not None]
        at_k = {key: ev.get(f"eval_{key}@{s.eval_samples}") for key in ("pass", "maj")}
        points.append({"pass_at_k": at_k["pass"], "maj_at_k": at_k["maj"], "pass_at_1": ev.get("eval_pass@1"),
                       "completion_tokens": ev["eval_completion_tokens"],
                       "drawn": [c.get("drawn", {}) for c in chunk],  # difficulty-aware sampling's counts
                       "train_reward_metrics": [c["reward_metrics"] for c in chunk],  # per iteration since the last
                       "eval_reward_metrics": {k: v for k, v in ev.items() if k.startswith(("eval_code_", "eval_label_"))},
                       "train_s": round(totals["train_s"], 2), "iterations": totals["iterations"],
                       "sampled": ev["eval_reward"], "greedy": ev["eval_reward_greedy"],
                       "gen_tokens": totals["gen_tokens"], "trained_tokens": totals["trained_tokens"],
                       "eval_s": round(ev["eval_seconds"], 1),
                       "train_reward": sum(rewards) / len(rewards) if rewards else None,
                       "kept": sum(c.get("kept", 0) for c in chunk), "loss": sum(losses) / len(losses) if losses else None})

    def train_until_budget(iteration: Any, before_eval: Any = None) -> None:
        """Run ``iteration()`` on the clock; evaluate (off the clock) once ``eval_every_s`` more have passed."""
        every = s.eval_every_s or s.budget_s / 4
        chunk, next_eval = [], every
        while totals["train_s"] < s.budget_s:
            t0 = time.perf_counter()
            chunk.append(iteration())
            totals["train_s"] += time.perf_counter() - t0
            totals["iterations"] += 1
            if totals["train_s"] >= min(next_eval, s.budget_s):
                if before_eval is not None:
                    before_eval()
                evaluate_point(chunk)
                chunk, next_eval = [], (int(totals["train_s"] // every) + 1) * every

    def sft_iteration() -> dict[str, Any]:
        torch.manual_seed(seed * 1000 + totals["iterations"])
        tasks = env.sample_prompts(s.prompts_per_iteration)
        if method == "gold_sft":
            scored = [Scored(t.id, [*t.messages, {"role": "assistant", "content": gold(t)}], gold(t), 1.0) for t in tasks]
            train_reward, metrics = None, {}
            drawn = {}
        else:
            scored, generations, drawn = sample_iteration(agent, env, tasks, threshold)
            totals["gen_tokens"] += generations.num_tokens
            train_reward = sum(x.reward for x in scored) / len(scored)
            metrics = dict(env.reward_metrics)
        stats = env.refill(scored)
        losses = []
        if stats["buffer"] and method == "restart":
            restart_from_base(agent)
        if stats["buffer"]:
            batch = env.reset(batch_size=agent.batch_size_per_process)
            for _ in range(s.sft_epochs * env.num_batches):
                losses.append(agent.learn(batch)["loss"])
                totals["trained_tokens"] += int(batch["loss_mask"].sum())
                batch = env.step()
        loss = sum(losses) / len(losses) if losses else None
        return {"train_reward": train_reward, "kept": int(stats["kept"]), "loss": loss, "reward_metrics": metrics,
                "drawn": drawn}

    if method == "base":
        evaluate_point([])
    elif method in SFT_METHODS:
        train_until_budget(sft_iteration)
    elif method in ("grpo_shipped", "grpo_fixed"):
        reward_fn = grpo_reward(reward_name)
        torch.manual_seed(seed)
        model = load_model(MODEL, dtype=torch.float32)[0]
        grpo = GRPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
                    lora_config=lora(s), lr=s.lr, beta=s.grpo_beta, group_size=s.num_generations,
                    batch_size=s.grpo_batch_size, max_output_tokens=s.max_new_tokens, temperature=s.temperature,
                    top_p=1.0, top_k=0, use_vllm=False, gradient_checkpointing=False, seed=seed)
        grpo.generation_config.eos_token_id = turn_end_token_ids(tokenizer)  # stop at <|im_end|> (both variants)
        (train_data, template), (test_data, _) = reasoning_data(train), reasoning_data(held_out)
        genv = ChunkedReasoningGym(train_data, test_data, tokenizer, reward_fn=reward_fn, conversation_template=template,
                                   data_batch_size_per_gpu=s.grpo_prompts_per_step, seed=seed,
                                   set_prompt_len=method == "grpo_fixed", stop_ids=turn_end_token_ids(tokenizer))
        get_action = grpo.get_action

        def counting_get_action(*args: Any, **kwargs: Any) -> Any:  # loss tokens = GRPO's own action masks
            result = get_action(*args, **kwargs)
            totals["trained_tokens"] += int(sum(int(m.sum()) for m in result.action_masks))
            return result

        grpo.get_action = counting_get_action

        def grpo_iteration() -> dict[str, Any]:  # one GRPO step: grpo_prompts_per_step prompts x group
            seen = len(genv.rewards_seen)
            finetune_llm_reasoning([grpo], env=genv, max_steps=s.grpo_prompts_per_step, evaluation_interval=10**9,
                                   verbose=False)
            totals["gen_tokens"] = genv.generated_tokens
            new = genv.rewards_seen[seen:]
            return {"train_reward": sum(new) / len(new), "reward_metrics": {}}  # GRPO's reward reports no metrics

        with tempfile.TemporaryDirectory(prefix="learning_grpo_") as tmp:
            def to_evaluator() -> None:  # GRPO's actor adapter into the SelfSFT evaluator, through a checkpoint
                load_adapters(agent, save_iteration(grpo, tmp, totals["iterations"], keep_last=1))

            train_until_budget(grpo_iteration, to_evaluator)
        first_pass = genv.prompts_seen[: len(train)]
        extra = {"grpo_prompts_seen": len(genv.prompts_seen),  # a restart would repeat prompts within a pass
                 "grpo_repeats_in_first_pass": len(first_pass) - len(set(first_pass)),
                 "grpo_first_prompts": genv.prompts_seen[:3]}
    else:
        raise ValueError(f"unknown method {method!r}; choose base or one of {', '.join(METHODS)}")
    return {"task": task, "seed": seed, "method": method, "reward": reward_name, "train_reward": train_reward_spec,
            "max_new_tokens": s.max_new_tokens, "points": points,
            "train_s": round(totals["train_s"], 2), "iterations": totals["iterations"],
            "wall_s": round(time.perf_counter() - started, 1), "peak_rss_mib": round(peak_rss_mib()),
            "torch_threads": torch.get_num_threads(), **extra}


def main() -> None:
    job, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    fields = {f.name for f in dataclasses.fields(Settings)}
    s = Settings(**{k: v for k, v in job["settings"].items() if k in fields})
    result = run(job["task"], job["seed"], job["method"], s)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
