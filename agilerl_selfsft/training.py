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
from agilerl_selfsft.distributed import check_supported, sample_scored
from agilerl_selfsft.env import SelfSFTGym
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.evaluation import evaluate, info_means
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
    eval_temperature: float | None = None,
    accelerator: Any | None = None,
    on_scored: Callable[[int, SelfSFT, list[Scored]], None] | None = None,
) -> tuple[list[SelfSFT], list[dict[str, Any]]]:
    """Self-train a population of :class:`SelfSFT` agents on their own best samples.

    Each iteration, for every agent: sample K completions for ``prompts_per_iteration`` train prompts,
    score them, select the best into the environment's buffer (with replayed past winners and, when the
    environment has static data, that iteration's share of static conversations), train ``sft_epochs``
    passes over it (metrics ``learned_static`` and ``learned_self`` count the rows learned from), and
    evaluate on the held-out prompts (the fitness). Then, every ``evo_steps`` iterations, the population is
    evolved with ``tournament`` and ``mutation``, and the best agent is checkpointed.

    Every agent trains on its own data: all agents see the same prompts, but each samples, selects, replays
    and learns from its own completions, at its own (mutable) K, temperature, selection threshold /
    top fraction, batch size, lr and KL coefficient. Fitness is the held-out reward, sampled at one
    ``eval_temperature`` for all agents, so a mutated sampling temperature cannot buy fitness.

    Iteration 0 is the starting policy, evaluated before any training.

    With an agent on ``env`` (:mod:`agilerl_selfsft.agents`), each sample is a multi-turn conversation of
    the agent with the policy (the turns of all conversations batched into one generate call), its reward
    the agent's; training learns every reply the policy generated in the selected trajectories. Info values
    the agent returns are reported as ``train_<key>`` and ``eval_<key>`` means.

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
    :param eval_temperature: temperature of the held-out samples (the fitness), defaults to None (the first
        agent's temperature at the start)
    :param resume: continue the run in ``checkpoint_path`` from its last complete iteration (adapters,
        optimizer, environment and random state, metrics); with no complete iteration there, start afresh.
        The result equals that of an uninterrupted run with the same seed. Defaults to False
    :param accelerator: the accelerate ``Accelerator`` (DeepSpeed plugin) the agents were built with, for a
        multi-process launch (see the README, "Several GPUs": prompts are sharded over processes and the results
        gathered, every process ends with the same adapters and metrics), defaults to None (the agents' own)
    :param on_scored: called as ``on_scored(iteration, agent, scored)`` with every scored completion of an
        agent's iteration, before selection (e.g. :func:`agilerl_selfsft.preferences.pair_writer` keeps
        them as DPO pairs); on the main process only, defaults to None
    :return: the final population and one metrics dict per iteration (as written to ``metrics.jsonl``)
    """
    _check_population(pop, tournament, mutation)
    eval_temperature = eval_temperature or pop[0].temperature
    dp = check_supported(pop, accelerator if accelerator is not None else pop[0].accelerator)
    verbose = verbose and dp.is_main
    if dp.enabled and getattr(env, "accelerator", None) is None:
        env.accelerator = dp.accelerator  # each process trains on its slice of every batch
    run_dir = Path(checkpoint_path) if checkpoint_path is not None else None
    history: list[dict[str, Any]] = []
    done = -1  # the last complete iteration
    latest = run_dir / "checkpoints" / "latest" if run_dir is not None else None
    if resume and latest is not None and latest.exists():
        done = restore(latest.resolve(), env, pop, mutation)
        history = [row for row in read_metrics(run_dir) if row["iteration"] <= done]
        _info(verbose, "[SelfSFT] Resuming after iteration %d from %s", done, latest.resolve())
    if run_dir is not None:
        if dp.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_lines(run_dir / "metrics.jsonl", history)  # drops rows of an iteration that did not finish
        dp.barrier()  # every rank has read the old metrics before they are rewritten
    wandb_run = _init_wandb(wb and dp.is_main, wandb_api_key, init_hp)
    start = time.perf_counter() - (history[-1]["wall_seconds"] if history else 0.0)

    def record(row: dict[str, Any]) -> None:
        row["wall_seconds"] = dp.broadcast(round(time.perf_counter() - start, 2))  # the main process's clock
        history.append(row)
        if run_dir is not None and dp.is_main:
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row, allow_nan=False, default=_jsonable) + "\n")
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in _namespaced(row).items() if v is not None}, step=row["iteration"])

    # ---- iteration 0: the starting policy ----
    if done < 0:
        tag = f"[SelfSFT 0/{iterations}]"
        _info(verbose, "%s [Stage 5] Evaluating the base policy on %d held-out prompts...", tag, len(env.eval_tasks))
        torch.manual_seed(dp.rank_seed(seed))
        base_eval = evaluate(pop[0], env, eval_samples, eval_greedy, temperature=eval_temperature)
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
            torch.manual_seed(dp.rank_seed(seed + iteration * 1000 + agent.index))
            who = f"{tag}" + (f" [agent {agent.index}]" if len(pop) > 1 else "")
            # 1. generate (with an agent: K multi-turn conversations per prompt, each turn batched)
            what = "agent conversations" if getattr(env, "agent", None) is not None else "completions"
            _info(verbose, "%s [Stage 1] Sampling %d %s for each of %d prompts (T=%.2f)...", who, agent.num_generations, what, len(tasks), agent.temperature)
            scored, generations = sample_scored(agent, env, tasks)  # 1-2: each process its share, gathered
            crash_point("generate", iteration)
            _info(verbose, "%s [Stage 2] Generated %d tokens in %.1fs (%.0f tokens/s).", who, generations.num_tokens, generations.seconds, generations.num_tokens / max(generations.seconds, 1e-9))
            # 2. score (done above, with generation; an agent scores its own conversations)
            if on_scored is not None and dp.is_main:
                on_scored(iteration, agent, scored)
            train_reward = float(np.mean([s.reward for s in scored]))
            # 3. select, mix in replayed winners and static data (this iteration's share of it), refill
            static_fraction = env.static_fraction_at(iteration)
            stats = env.refill(scored, agent.index, agent.selection_threshold, agent.selection_top_fraction,
                               static_fraction)
            _info(verbose, "%s [Stage 3] Train reward %.4f. Keeping %d example(s) after reward-based filtering (%d prompts solved, %d replayed).", who, train_reward, stats["kept"], stats["prompts_solved"], stats["replayed"])
            if env.static_data:
                _info(verbose, "%s [Stage 3] Mixing in %d static conversation(s) (share %.2f).", who, stats["static"],
                      static_fraction)
            # 4. learn
            learn = {"loss": None, "kl": None, "steps": 0}
            learned = {"static": 0, "self": 0}  # rows learned from, by origin (over all processes)
            if stats["buffer"] == 0:
                _info(verbose, "%s [Stage 4] Nothing passed the filter: skipping training this iteration.", who)
            else:
                rows = agent.batch_size_per_process
                batch = env.reset(batch_size=rows)  # from here on, batches of this agent's size
                steps = sft_epochs * env.num_batches  # a batch: every process's rows
                _info(verbose, "%s [Stage 4] Training on %d example(s): %d epoch(s), %d step(s) of batch %d.", who, stats["buffer"], sft_epochs, steps, rows)
                losses, kls = [], []
                for _ in tqdm(range(steps), desc=f"{who} learn", leave=False, disable=not verbose):
                    out = agent.learn(batch)
                    crash_point("learn", iteration)
                    losses.append(out["loss"])
                    kls.append(out["kl"])
                    learned["static"] += batch["num_static"]
                    learned["self"] += batch["num_self"]
                    batch = env.step()
                learn = {"loss": dp.mean(float(np.mean(losses))), "kl": dp.mean(float(np.mean(kls))), "steps": steps}
            # 5. evaluate
            _info(verbose, "%s [Stage 5] Evaluating on %d held-out prompts...", who, len(env.eval_tasks))
            evaluation = evaluate(agent, env, eval_samples, eval_greedy, temperature=eval_temperature)
            agent.metrics.add_fitness(evaluation["eval_reward"])
            _info(verbose, "%s [Stage 5] Evaluation completed. Average reward: %.4f (greedy %.4f)", who, evaluation["eval_reward"], evaluation["eval_reward_greedy"])
            members.append({
                **_hp(agent), **_clean(evaluation), "train_reward": train_reward,
                **{f"train_{key}": value for key, value in info_means(scored).items()}, **stats,
                "loss": learn["loss"], "kl": learn["kl"], "learn_steps": learn["steps"],
                "learned_static": learned["static"], "learned_self": learned["self"],
                "gen_tokens": generations.num_tokens, "gen_seconds": round(generations.seconds, 2),
            })
        empty_streak = empty_streak + 1 if all(m["kept"] == 0 for m in members) else 0
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
            env.inherit_replays({a.index: a._cloned_from for a in pop})  # each child keeps its parent's replay
            _info(verbose, "%s [Stage 6] Evolved: %s", tag, ", ".join(f"agent {a.index} <- {a._cloned_from} ({a.mut})" for a in pop))
        # 7. checkpoint the elite, with the run state
        if save_elite and run_dir is not None:
            path = save_iteration(
                elite, run_dir, iteration, keep_checkpoints, info={"eval_reward": row["eval_reward"]},
                extra=lambda folder: write_state(folder, iteration, env, pop, mutation),
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
    return {
        "agent": agent.index, "parent": getattr(agent, "_cloned_from", None), "mutation": getattr(agent, "mut", None),
        "lr": agent.lr, "temperature": agent.temperature, "num_generations": agent.num_generations,
        "kl_coef": agent.kl_coef, "batch_size": agent.batch_size,
        "selection_threshold": agent.selection_threshold, "selection_top_fraction": agent.selection_top_fraction,
    }


def _check_population(pop: list[SelfSFT], tournament: Any, mutation: Any) -> None:
    """Reject, before any work, a population or evolution setup that AgileRL would fail on later."""
    if not pop:
        raise SelfSFTError("the population is empty: pass at least one SelfSFT agent")
    if len({a.index for a in pop}) != len(pop):
        raise SelfSFTError(f"agents must have distinct indices, got {[a.index for a in pop]}")
    if (tournament is None) != (mutation is None):
        raise SelfSFTError("evolution needs both tournament and mutation (or neither)")
    if tournament is None:
        return
    if not tournament.elitism:
        raise SelfSFTError("TournamentSelection(elitism=False) is not supported for LLM populations: use elitism=True")
    if tournament.population_size != len(pop):
        raise SelfSFTError(f"TournamentSelection has population_size={tournament.population_size} but the population has {len(pop)} agents")
    bad = {name: p for name, p in (("architecture", mutation.architecture_mut), ("parameters", mutation.parameters_mut), ("activation", mutation.activation_mut)) if p}
    if bad:
        raise SelfSFTError(f"LLM agents only take rl_hp mutations: set {', '.join(f'{k}=0 (got {v})' for k, v in bad.items())} in Mutations")
    if mutation.rl_hp_mut and not any(a.registry.hp_config for a in pop):
        raise SelfSFTError("Mutations(rl_hp>0) needs an hp_config on the agents naming what to mutate (e.g. lr, temperature)")


def _clean(d: dict[str, float]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _namespaced(row: dict[str, Any]) -> dict[str, Any]:
    names = {"eval_reward": "reward/eval", "eval_reward_greedy": "reward/eval_greedy", "train_reward": "reward/train", "loss": "loss/sft", "kl": "loss/kl", "kept": "data/kept",
             "static": "data/static", "learned_static": "data/learned_static", "learned_self": "data/learned_self"}
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
