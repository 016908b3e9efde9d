"""The self-improvement loop: generate → score → select → refill → learn → evaluate → checkpoint → evolve."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agilerl_selfsft.algorithm import SelfSFT
from agilerl_selfsft.checkpoints import save_iteration
from agilerl_selfsft.env import SelfSFTGym
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.evaluation import evaluate
from agilerl_selfsft.report import read_metrics
from agilerl_selfsft.runstate import crash_point, restore, write_state
from agilerl_selfsft.selection import Scored

log = logging.getLogger("agilerl_selfsft")


def finetune_llm_selfsft(
    pop: list[SelfSFT],
    env: SelfSFTGym,
    init_hp: dict[str, Any] | None = None,
    iterations: int = 6,
    prompts_per_iteration: int = 64,
    sft_epochs: int = 2,
    eval_samples: int = 4,
    eval_greedy: bool = True,
    evo_steps: int = 1,
    tournament: Any | None = None,
    mutation: Any | None = None,
    save_elite: bool = True,
    checkpoint_path: str | Path | None = None,
    keep_checkpoints: int = 3,
    wb: bool = False,
    wandb_api_key: str | None = None,
    seed: int = 42,
    verbose: bool = True,
    resume: bool = False,
    stop_after_empty: int | None = None,
    on_scored: Callable[[int, SelfSFT, list[Scored]], None] | None = None,
) -> tuple[list[SelfSFT], list[dict[str, Any]]]:
    """Self-train a population of :class:`SelfSFT` agents on their own best samples.

    Each iteration, for every agent: sample K completions for ``prompts_per_iteration`` train prompts,
    score them, select the best into the environment's buffer, train ``sft_epochs`` passes over it, and
    evaluate on the held-out prompts (the fitness). Then the best agent is checkpointed and, every
    ``evo_steps`` iterations, the population is evolved with ``tournament`` and ``mutation``.

    Iteration 0 is the starting policy, evaluated before any training.

    :param pop: the agents (all share ``env``; each trains on its own samples)
    :param env: prompts, reward, selection and the training buffer
    :param init_hp: AgileRL-style hyperparameters, recorded with the run, defaults to None
    :param iterations: self-training iterations, defaults to 6
    :param prompts_per_iteration: train prompts sampled per iteration, defaults to 64
    :param sft_epochs: passes over the selected samples per iteration, defaults to 2
    :param eval_samples: held-out completions per prompt for ``eval_reward``, defaults to 4
    :param eval_greedy: also report greedy held-out reward, defaults to True
    :param evo_steps: iterations between evolutions, defaults to 1
    :param tournament: AgileRL ``TournamentSelection``, defaults to None (no evolution)
    :param mutation: AgileRL ``Mutations``, defaults to None
    :param save_elite: checkpoint the best agent every iteration (needs ``checkpoint_path``), defaults to True
    :param checkpoint_path: the run directory: ``metrics.jsonl`` and ``checkpoints/`` go there, defaults
        to None (nothing written)
    :param keep_checkpoints: iterations whose checkpoints are kept, defaults to 3
    :param wb: log to Weights & Biases, defaults to False
    :param wandb_api_key: key for ``wandb.login``, defaults to None
    :param seed: seeds generation each iteration (``seed + iteration``), defaults to 42
    :param verbose: stage logs and progress bars, defaults to True
    :param stop_after_empty: stop with a :class:`SelfSFTError` when no sample passes the selection for
        this many iterations in a row (finished iterations stay checkpointed), defaults to None (keep going)
    :param resume: continue the run in ``checkpoint_path`` from its last complete iteration (adapters,
        optimizer, environment and random state, metrics); with no complete iteration there, start afresh.
        The result equals that of an uninterrupted run with the same seed. Defaults to False
    :param on_scored: called as ``on_scored(iteration, agent, scored)`` with every scored completion of an
        agent's iteration, before selection (e.g. :func:`agilerl_selfsft.preferences.pair_writer` keeps
        them as DPO pairs), defaults to None
    :return: the final population and one metrics dict per iteration (as written to ``metrics.jsonl``)
    """
    run_dir = Path(checkpoint_path) if checkpoint_path is not None else None
    history: list[dict[str, Any]] = []
    done = -1  # the last complete iteration
    latest = run_dir / "checkpoints" / "latest" if run_dir is not None else None
    if resume and latest is not None and latest.exists():
        done = restore(latest.resolve(), env, pop)
        history = [row for row in read_metrics(run_dir) if row["iteration"] <= done]
        _info(verbose, "[SelfSFT] Resuming after iteration %d from %s", done, latest.resolve())
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_lines(run_dir / "metrics.jsonl", history)  # drops rows of an iteration that did not finish
    wandb_run = _init_wandb(wb, wandb_api_key, init_hp)
    start = time.perf_counter() - (history[-1]["wall_seconds"] if history else 0.0)

    def record(row: dict[str, Any]) -> None:
        row["wall_seconds"] = round(time.perf_counter() - start, 2)
        history.append(row)
        if run_dir is not None:
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row, allow_nan=False, default=_jsonable) + "\n")
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in _namespaced(row).items() if v is not None}, step=row["iteration"])

    # ---- iteration 0: the starting policy ----
    if done < 0:
        tag = f"[SelfSFT 0/{iterations}]"
        _info(verbose, "%s [Stage 5] Evaluating the base policy on %d held-out prompts...", tag, len(env.eval_tasks))
        torch.manual_seed(seed)
        base_eval = evaluate(pop[0], env, eval_samples, eval_greedy)
        for agent in pop:
            agent.metrics.add_fitness(base_eval["eval_reward"])
        _info(verbose, "%s Evaluation completed. Average reward: %.4f (greedy %.4f)", tag, base_eval["eval_reward"], base_eval["eval_reward_greedy"])
        record({"iteration": 0, **_clean(base_eval), "train_reward": None, "kept": 0, "population": [_hp(a) for a in pop]})

    empty_streak = 0
    for iteration in range(max(done, 0) + 1, iterations + 1):
        tag = f"[SelfSFT {iteration}/{iterations}]"
        tasks = env.sample_prompts(prompts_per_iteration)
        members = []
        for agent in pop:
            torch.manual_seed(seed + iteration * 1000 + agent.index)
            who = f"{tag}" + (f" [agent {agent.index}]" if len(pop) > 1 else "")
            # 1. generate
            _info(verbose, "%s [Stage 1] Sampling %d completions for each of %d prompts (T=%.2f)...", who, agent.num_generations, len(tasks), agent.temperature)
            generations = agent.sample([t.messages for t in tasks])
            crash_point("generate", iteration)
            _info(verbose, "%s [Stage 2] Generated %d tokens in %.1fs (%.0f tokens/s).", who, generations.num_tokens, generations.seconds, generations.num_tokens / max(generations.seconds, 1e-9))
            # 2. score
            scored = env.score(tasks, generations)
            if on_scored is not None:
                on_scored(iteration, agent, scored)
            train_reward = float(np.mean([s.reward for s in scored]))
            # 3. select and refill
            stats = env.refill(scored)
            _info(verbose, "%s [Stage 3] Train reward %.4f. Keeping %d example(s) after reward-based filtering (%d prompts solved, %d replayed).", who, train_reward, stats["kept"], stats["prompts_solved"], stats["replayed"])
            # 4. learn
            learn = {"loss": None, "kl": None, "steps": 0}
            if stats["buffer"] == 0:
                _info(verbose, "%s [Stage 4] Nothing passed the filter: skipping training this iteration.", who)
            else:
                steps = sft_epochs * env.num_batches
                _info(verbose, "%s [Stage 4] Training on %d example(s): %d epoch(s), %d step(s) of batch %d.", who, stats["buffer"], sft_epochs, steps, env.data_batch_size_per_gpu)
                losses, kls = [], []
                batch = env.reset()
                for _ in tqdm(range(steps), desc=f"{who} learn", leave=False, disable=not verbose):
                    out = agent.learn(batch)
                    crash_point("learn", iteration)
                    losses.append(out["loss"])
                    kls.append(out["kl"])
                    batch = env.step()
                learn = {"loss": float(np.mean(losses)), "kl": float(np.mean(kls)), "steps": steps}
            # 5. evaluate
            _info(verbose, "%s [Stage 5] Evaluating on %d held-out prompts...", who, len(env.eval_tasks))
            evaluation = evaluate(agent, env, eval_samples, eval_greedy)
            agent.metrics.add_fitness(evaluation["eval_reward"])
            _info(verbose, "%s [Stage 5] Evaluation completed. Average reward: %.4f (greedy %.4f)", who, evaluation["eval_reward"], evaluation["eval_reward_greedy"])
            members.append({
                **_hp(agent), **_clean(evaluation), "train_reward": train_reward, **stats,
                "loss": learn["loss"], "kl": learn["kl"], "learn_steps": learn["steps"],
                "gen_tokens": generations.num_tokens, "gen_seconds": round(generations.seconds, 2),
            })
        empty_streak = empty_streak + 1 if all(m["buffer"] == 0 for m in members) else 0
        if empty_streak > 1:
            log.warning("%s Nothing passed the selection for %d iterations in a row: lower selection.threshold, "
                        "raise num_generations or temperature, or check the reward.", tag, empty_streak)
        best = int(np.argmax([m["eval_reward"] for m in members]))
        row = {"iteration": iteration, **{k: v for k, v in members[best].items() if k not in _hp(pop[best])}}
        row["population"] = members
        elite = pop[best]
        record(row)  # before the checkpoint: a resume drops rows newer than its checkpoint, never misses one
        # 6. evolve (before the checkpoint, so a resumed run continues from the evolved population)
        if tournament is not None and mutation is not None and iteration % evo_steps == 0 and iteration < iterations:
            elite, pop, _ = tournament.select(pop)  # agilerl 2.10: (elite, population, _)
            pop = mutation.mutation(pop)
        # 7. checkpoint the elite, with the run state
        if save_elite and run_dir is not None:
            path = save_iteration(
                elite, run_dir, iteration, keep_checkpoints, info={"eval_reward": row["eval_reward"]},
                extra=lambda folder: write_state(folder, iteration, env, pop),
            )
            _info(verbose, "%s [Stage 7] Checkpoint saved: %s", tag, path)
        if stop_after_empty is not None and empty_streak >= stop_after_empty:  # after this iteration is kept
            raise SelfSFTError(f"nothing passed the selection for {empty_streak} iterations in a row "
                               f"(iterations {iteration - empty_streak + 1}-{iteration}); lower selection.threshold, "
                               "raise num_generations or temperature, or check the reward")
    if wandb_run is not None:
        wandb_run.finish()
    return pop, history


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, allow_nan=False, default=_jsonable) + "\n" for row in rows))
    tmp.replace(path)


def _hp(agent: SelfSFT) -> dict[str, Any]:
    return {"agent": agent.index, "lr": agent.lr, "temperature": agent.temperature, "num_generations": agent.num_generations, "kl_coef": agent.kl_coef, "batch_size": agent.batch_size}


def _clean(d: dict[str, float]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _namespaced(row: dict[str, Any]) -> dict[str, Any]:
    names = {"eval_reward": "reward/eval", "eval_reward_greedy": "reward/eval_greedy", "train_reward": "reward/train", "loss": "loss/sft", "kl": "loss/kl", "kept": "data/kept"}
    return {names.get(k, f"misc/{k}"): v for k, v in row.items() if isinstance(v, (int, float)) or v is None}


def _info(verbose: bool, msg: str, *args: Any) -> None:
    if verbose:
        log.info(msg, *args)


def _init_wandb(wb: bool, api_key: str | None, init_hp: dict | None) -> Any:
    if not wb:
        return None
    import wandb  # optional: only when asked for

    if api_key:
        wandb.login(key=api_key)
    return wandb.init(project="agilerl-selfsft", config=init_hp or {})
