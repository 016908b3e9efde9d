"""The self-improvement loop: prompts → generate → score → select → buffer → learn → evaluate → evolve.

:func:`finetune_llm_selfsft` reads top to bottom as the stages of one iteration; each stage is one function
below it, in the same order. The stages' work is done elsewhere: generation and scoring in
:mod:`agilerl_selfsft.generation.collect`, selection and the buffer in :class:`~agilerl_selfsft.env.gym.SelfSFTGym`,
learning in :class:`~agilerl_selfsft.algorithm.selfsft.SelfSFT`, evaluation in
:mod:`agilerl_selfsft.training.evaluation`, evolution in AgileRL, checkpoints and run state in
:mod:`agilerl_selfsft.training.checkpoints`, the metrics log in :mod:`agilerl_selfsft.training.report`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agilerl_selfsft.algorithm.population import check_population
from agilerl_selfsft.algorithm.restart import check_restartable
from agilerl_selfsft.algorithm.restart import restart_from_base as restart
from agilerl_selfsft.algorithm.selfsft import SelfSFT
from agilerl_selfsft.distributed import DataParallel, check_launch
from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.env.curriculum import sample_iteration
from agilerl_selfsft.samples import Generations, Scored, Task
from agilerl_selfsft.training.checkpoints import latest_checkpoint, restore, save_iteration, write_state
from agilerl_selfsft.training.evaluation import evaluate, info_means, mean_reward
from agilerl_selfsft.training.faults import crash_point
from agilerl_selfsft.training.report import RunLog, StageClock, open_wandb, read_metrics, visible_logs
from agilerl_selfsft.training.rundir import run_folder
from agilerl_selfsft.training.sample_log import DEFAULT_PER_ITERATION, log_best_and_worst, sample_rows

log = logging.getLogger("agilerl_selfsft")
EMPTY_HINT = "lower selection.threshold, raise num_generations or temperature, or check the reward"


def _one_trainer_per_run_dir(loop: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``loop`` in its run folder (:func:`~agilerl_selfsft.training.rundir.run_folder`: the folder's lock and
    rules, the command line's too) with its log lines shown (:func:`~agilerl_selfsft.training.report.visible_logs`).

    A second trainer on the same ``checkpoint_path`` (or a resume while this run goes) is a
    :class:`SelfSFTError` naming this process's PID; so is a folder holding another run without ``resume`` or
    ``overwrite``, and a ``resume`` of a folder that does not exist. Only the main process of a launch takes the
    lock and checks the folder.
    """
    signature = inspect.signature(loop)

    @functools.wraps(loop)
    def locked(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs)
        run_dir, pop = call.arguments.get("checkpoint_path"), call.arguments["pop"]
        accelerator = call.arguments.get("accelerator") or (getattr(pop[0], "accelerator", None) if pop else None)
        main = DataParallel(accelerator).is_main
        resume, overwrite = call.arguments.get("resume", False), call.arguments.get("overwrite", False)
        folder = run_folder(run_dir, resume, overwrite) if run_dir is not None and main else nullcontext()
        with folder, visible_logs(call.arguments.get("verbose", True) and main):
            return loop(*args, **kwargs)

    return locked


@_one_trainer_per_run_dir
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
    restart_from_base: bool = False,
    overwrite: bool = False,
    samples_per_iteration: int | None = DEFAULT_PER_ITERATION,
    log_examples: int = 1,
    wandb_config: dict[str, Any] | None = None,
    tensorboard: bool = False,
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

    Iteration 0 is the starting policy, evaluated before any training. Each stage of an iteration is one
    function of this module, called in the loop's order: :func:`_generate` (1–2), :func:`_select` (3),
    :func:`_learn` (4), :func:`_evaluate` (5), :func:`_evolve` (6), then the checkpoint (7).

    With an agent on ``env`` (:mod:`agilerl_selfsft.generation.agents`), each sample is a multi-turn conversation of
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
    :param checkpoint_path: the run directory: ``metrics.jsonl``, ``samples/`` and ``checkpoints/`` go there, by
        the rules of :func:`~agilerl_selfsft.training.rundir.run_folder` (an exclusive lock while the run goes;
        a folder holding another run is refused unless ``resume`` or ``overwrite``; a run that completes no
        iteration leaves nothing behind), defaults to None (nothing written)
    :param keep_checkpoints: iterations whose checkpoints are kept, defaults to 3
    :param wb: log to Weights & Biases (the metrics under namespaced keys, and a table of each iteration's
        samples), defaults to False
    :param wandb_api_key: key for ``wandb.login``, defaults to None
    :param wandb_config: ``wandb.init`` arguments (``project``, ``name``, ``entity``, ``tags``, ``mode``…),
        defaults to None (project ``agilerl-selfsft``)
    :param tensorboard: also write the metrics as TensorBoard scalars to ``checkpoint_path/tensorboard``
        (needs the ``tensorboard`` package), defaults to False
    :param seed: seeds generation each iteration (``seed + iteration``), defaults to 42
    :param verbose: stage logs (on stderr unless logging is configured:
        :func:`~agilerl_selfsft.training.report.visible_logs`) and progress bars (on a terminal), defaults to True
    :param stop_after_empty: stop with a :class:`SelfSFTError` when no sample passes the selection for
        this many iterations in a row (finished iterations stay checkpointed), defaults to None (keep going)
    :param eval_temperature: temperature of the held-out samples (the fitness), defaults to None (the first
        agent's ``sampling_temperature`` at the start); 0 samples greedily
    :param resume: continue the run in ``checkpoint_path`` from its last complete iteration (adapters,
        optimizer, environment and random state, metrics); with no complete iteration there, start afresh.
        The result equals that of an uninterrupted run with the same seed. Defaults to False
    :param accelerator: the accelerate ``Accelerator`` (DeepSpeed plugin) the agents were built with, for a
        multi-process launch (see the README, "Several GPUs": prompts are sharded over processes and the results
        gathered, every process ends with the same adapters and metrics), defaults to None (the agents' own)
    :param on_scored: called as ``on_scored(iteration, agent, scored)`` with every scored completion of an
        agent's iteration, before selection (e.g. :func:`agilerl_selfsft.export.pairs.pair_writer` keeps
        them as DPO pairs); on the main process only, defaults to None
    :param restart_from_base: ReST-EM: every iteration trains fresh actor adapters from the base
        (:func:`~agilerl_selfsft.algorithm.restart.restart_from_base`) on every sample selected so far (the
        environment is set to ``accumulate``), instead of continuing from the last iteration's, defaults to False
    :param overwrite: replace the run in ``checkpoint_path`` (only what a run wrote is deleted), defaults to False
    :param samples_per_iteration: rows of ``checkpoint_path/samples/iteration_NNNN.jsonl``, every sample with its
        reward terms and flags (:mod:`~agilerl_selfsft.training.sample_log`), defaults to 512; None: all, 0: none
    :param log_examples: the best and the worst samples of each iteration logged, this many of each, defaults to 1
    :return: the final population and one metrics dict per iteration (as written to ``metrics.jsonl``)
    """
    check_population(pop, tournament, mutation)
    eval_temperature = pop[0].sampling_temperature if eval_temperature is None else eval_temperature
    dp = check_launch(pop, accelerator if accelerator is not None else pop[0].accelerator)
    verbose = verbose and dp.is_main
    if dp.enabled and getattr(env, "accelerator", None) is None:
        env.accelerator = dp.accelerator  # each process trains on its slice of every batch
    run_dir = Path(checkpoint_path) if checkpoint_path is not None else None
    if restart_from_base:
        for agent in pop:
            check_restartable(agent)  # before any work
        env.accumulate = True  # before any replay memory exists (a resume restores them into accumulating ones)
    done, history = _resume(run_dir, env, pop, mutation, verbose) if resume else (-1, [])
    wandb_run = open_wandb(wandb_api_key, init_hp, wandb_config) if wb and dp.is_main else None
    metrics = RunLog(run_dir, history, dp, wandb_run, tensorboard=tensorboard)
    evaluate_on = dict(num_samples=eval_samples, greedy=eval_greedy, temperature=eval_temperature, seed=seed)
    progress = tqdm(total=iterations, initial=max(done, 0), desc="SelfSFT", unit="iteration",
                    disable=None if verbose else True)  # None: shown on a terminal only

    with metrics, progress:  # closed (wandb finished, the bar ended) also when the loop raises
        if done < 0:  # iteration 0: the starting policy
            tag = f"[SelfSFT 0/{iterations}]"
            base = _evaluate(pop[0], env, evaluate_on, f"{tag} [Stage 5]", "the base policy ", verbose)
            for agent in pop:
                agent.metrics.add_fitness(base["eval_reward"])
            metrics.record({"iteration": 0, **_clean(base), "train_reward": None, "kept": 0,
                            "population": [_hp(a) for a in pop]})

        empty_streak = 0
        for iteration in range(max(done, 0) + 1, iterations + 1):
            tag = f"[SelfSFT {iteration}/{iterations}]"
            tasks = env.sample_prompts(prompts_per_iteration)  # every agent answers the same prompts
            members, samples = [], []
            for agent in pop:
                torch.manual_seed(dp.rank_seed(seed + iteration * 1000 + agent.index))
                who = tag + (f" [agent {agent.index}]" if len(pop) > 1 else "")
                clock = StageClock()  # seconds_<stage> in the row: where the iteration's time went
                with clock("generate"):
                    scored, generations, counted = _generate(agent, env, tasks, iteration, who, verbose)  # 1-2.
                if on_scored is not None and dp.is_main:
                    on_scored(iteration, agent, scored)
                if verbose:
                    log_best_and_worst(who, scored, log_examples)
                with clock("select"):
                    stats = _select(agent, env, scored, iteration, who, verbose)  # 3.
                samples += sample_rows(iteration, agent.index, scored, env.buffer) if dp.is_main else []
                with clock("learn"):
                    learned = _learn(agent, env, stats, sft_epochs, dp, iteration, who, verbose,  # 4.
                                     restart_from_base)
                with clock("evaluate"):
                    evaluation = _evaluate(agent, env, evaluate_on, f"{who} [Stage 5]", "", verbose)  # 5.
                agent.metrics.add_fitness(evaluation["eval_reward"])
                members.append(_member_row(agent, scored, generations, {**stats, **counted}, learned, evaluation,
                                           dp.broadcast(clock.seconds)))  # the main process's clock, as wall_seconds
            empty_streak = empty_streak + 1 if all(m["kept"] == 0 for m in members) else 0
            if empty_streak > 1:
                log.warning("%s Nothing passed the selection for %d iterations in a row: %s.",
                            tag, empty_streak, EMPTY_HINT)
            best = int(np.argmax([-math.inf if m["eval_reward"] is None else m["eval_reward"] for m in members]))
            row = {"iteration": iteration, **{k: v for k, v in members[best].items() if k not in _hp(pop[best])},
                   "population": members}
            elite = pop[best]
            metrics.record_samples(iteration, samples, samples_per_iteration, seed)  # samples/iteration_NNNN.jsonl
            metrics.record(row)  # before the checkpoint: a resume drops rows newer than it, never misses one
            evolve = tournament is not None and mutation is not None and iteration % evo_steps == 0
            if evolve and iteration < iterations:
                elite, pop = _evolve(pop, env, tournament, mutation, tag, verbose)  # 6. (before the checkpoint)
            if save_elite and run_dir is not None:  # 7. the elite, with the run state
                path = save_iteration(elite, run_dir, iteration, keep_checkpoints,
                                      info={"eval_reward": row["eval_reward"]},
                                      extra=lambda folder: write_state(folder, iteration, env, pop, mutation))
                _info(verbose, "%s [Stage 7] Checkpoint saved: %s", tag, path)
            progress.update()
            if stop_after_empty is not None and empty_streak >= stop_after_empty:  # after this iteration is kept
                raise SelfSFTError(f"nothing passed the selection for {empty_streak} iterations in a row "
                                   f"(iterations {iteration - empty_streak + 1}-{iteration}); {EMPTY_HINT}")
    return pop, metrics.history


# ---- the stages, in the loop's order ----
def _resume(
    run_dir: Path | None, env: SelfSFTGym, pop: list[SelfSFT], mutation: Any, verbose: bool
) -> tuple[int, list[dict[str, Any]]]:
    """The last complete iteration in ``run_dir`` (agents, env and random state restored) and its metrics rows;
    ``(-1, [])`` when there is none."""
    latest = latest_checkpoint(run_dir) if run_dir is not None else None  # only the run's own checkpoints
    if latest is None:
        return -1, []
    done = restore(latest, env, pop, mutation)
    _info(verbose, "[SelfSFT] Resuming after iteration %d from %s", done, latest)
    return done, [row for row in read_metrics(run_dir) if row["iteration"] <= done]


def _generate(
    agent: SelfSFT, env: SelfSFTGym, tasks: list[Task], iteration: int, who: str, verbose: bool
) -> tuple[list[Scored], Generations, dict[str, float]]:
    """1-2. Sample K completions (with an agent: K multi-turn conversations) per prompt and score them (with
    difficulty settings, refilling with fresh prompts: :func:`~agilerl_selfsft.env.curriculum.sample_iteration`);
    also what the reward functions counted (``train_<metric>``) and the draws' counts."""
    what = "agent conversations" if getattr(env, "agent", None) is not None else "completions"
    _info(verbose, "%s [Stage 1] Sampling %d %s for each of %d prompts (T=%.2f)...",
          who, agent.num_generations, what, len(tasks), agent.sampling_temperature)
    threshold = env.threshold if agent.selection_threshold is None else agent.selection_threshold
    scored, generations, drawn = sample_iteration(agent, env, tasks, threshold)  # each process its share, gathered
    counted = {f"train_{k}": v for k, v in getattr(env, "reward_metrics", {}).items()}  # the reward functions'
    if env.curriculum.settings is not None:
        _info(verbose, "%s [Stage 1] %d draw(s), %d prompts, %d informative; skipped %d mastered, %d unsolvable.",
              who, drawn["draws"], drawn["prompts_sampled"], drawn["informative_prompts"],
              drawn["prompts_skipped_mastered"], drawn["prompts_unsolvable"])
    counted.update(drawn)
    if counted:
        _info(verbose, "%s [Stage 2] Reward: %s.", who, ", ".join(f"{k} {v:g}" for k, v in sorted(counted.items())))
    crash_point("generate", iteration)
    _info(verbose, "%s [Stage 2] Generated %d tokens in %.1fs (%.0f tokens/s).", who, generations.num_tokens,
          generations.seconds, generations.num_tokens / max(generations.seconds, 1e-9))
    return scored, generations, counted


def _select(
    agent: SelfSFT, env: SelfSFTGym, scored: list[Scored], iteration: int, who: str, verbose: bool
) -> dict[str, float]:
    """3. Select by reward, add replayed winners and this iteration's share of static data: the new buffer."""
    static_fraction = env.static_fraction_at(iteration)
    stats = env.refill(scored, agent.index, agent.selection_threshold, agent.selection_top_fraction, static_fraction)
    _info(verbose, "%s [Stage 3] Train reward %.4f. Keeping %d example(s) after reward-based filtering "
          "(%d prompts solved, %d replayed).", who, mean_reward(scored), stats["kept"],
          stats["prompts_solved"], stats["replayed"])
    if env.static_data:
        _info(verbose, "%s [Stage 3] Mixing in %d static conversation(s) (share %.2f).", who, stats["static"],
              static_fraction)
    return stats


def _learn(
    agent: SelfSFT, env: SelfSFTGym, stats: dict[str, float], sft_epochs: int, dp: DataParallel, iteration: int,
    who: str, verbose: bool, from_base: bool = False,
) -> dict[str, Any]:
    """4. ``sft_epochs`` passes over the buffer in the agent's batch size (``from_base``: from fresh adapters):
    the mean loss and KL, the steps taken and the rows learned from by origin (over all processes)."""
    learned: dict[str, Any] = {"loss": None, "kl": None, "steps": 0, "static": 0, "self": 0}
    if stats["buffer"] == 0:
        _info(verbose, "%s [Stage 4] Nothing passed the filter: skipping training this iteration.", who)
        return learned
    if from_base:
        layers = restart(agent)  # fresh actor adapter and optimizer: this iteration trains from the base
        _info(verbose, "%s [Stage 4] Restarting from the base: %d LoRA layers re-initialised.", who, layers)
    rows = agent.batch_size_per_process
    batch = env.reset(batch_size=rows)  # from here on, batches of this agent's size
    steps = sft_epochs * env.num_batches  # a batch: every process's rows
    _info(verbose, "%s [Stage 4] Training on %d example(s): %d epoch(s), %d step(s) of batch %d.",
          who, stats["buffer"], sft_epochs, steps, rows)
    losses, kls = [], []
    for _ in tqdm(range(steps), desc=f"{who} learn", leave=False, disable=None if verbose else True):
        out = agent.learn(batch)
        crash_point("learn", iteration)
        losses.append(out["loss"])
        kls.append(out["kl"])
        learned["static"] += batch["num_static"]
        learned["self"] += batch["num_self"]
        batch = env.step()
    learned.update(loss=dp.mean(float(np.mean(losses))), kl=dp.mean(float(np.mean(kls))), steps=steps)
    return learned


def _evaluate(
    agent: SelfSFT, env: SelfSFTGym, settings: dict[str, Any], tag: str, what: str, verbose: bool
) -> dict[str, float]:
    """5. The held-out reward: the agent's fitness (``what``, e.g. ``"the base policy "``, names it in the log)."""
    _info(verbose, "%s Evaluating %son %d held-out prompts...", tag, what, len(env.eval_tasks))
    result = evaluate(agent, env, **settings)
    _info(verbose, "%s Evaluation completed. Average reward: %.4f (greedy %.4f)", tag, result["eval_reward"],
          result["eval_reward_greedy"])
    return result


def _evolve(
    pop: list[SelfSFT], env: SelfSFTGym, tournament: Any, mutation: Any, tag: str, verbose: bool
) -> tuple[SelfSFT, list[SelfSFT]]:
    """6. AgileRL's tournament and mutations; each new member keeps its parent's replay memory."""
    elite, pop, _ = tournament.select(pop)  # agilerl 2.10: (elite, population, _)
    pop = mutation.mutation(pop)
    env.inherit_replays({a.index: a._cloned_from for a in pop})
    _info(verbose, "%s [Stage 6] Evolved: %s", tag,
          ", ".join(f"agent {a.index} <- {a._cloned_from} ({a.mut})" for a in pop))
    return elite, pop


# ---- rows and checks ----
def _member_row(
    agent: SelfSFT, scored: list[Scored], generations: Generations, stats: dict[str, float],
    learned: dict[str, Any], evaluation: dict[str, float], seconds: dict[str, float],
) -> dict[str, Any]:
    """One agent's part of the iteration's metrics row (``seconds``: its stages' times; generating is split into
    sampling and scoring)."""
    sample, score = generations.seconds, seconds["seconds_generate"] - generations.seconds
    return _clean({
        **seconds, "seconds_sample": round(sample, 3), "seconds_score": round(max(score, 0.0), 3),
        **_hp(agent), **evaluation, "train_reward": mean_reward(scored),
        **{f"train_{key}": value for key, value in info_means(scored).items()}, **stats,
        "loss": learned["loss"], "kl": learned["kl"], "learn_steps": learned["steps"],
        "learned_static": learned["static"], "learned_self": learned["self"],
        "gen_tokens": generations.num_tokens, "gen_seconds": round(generations.seconds, 2),
        "gen_tokens_per_kept": generations.num_tokens / stats["kept"] if stats["kept"] else None,
    })


def _hp(agent: SelfSFT) -> dict[str, Any]:
    return {
        "agent": agent.index, "parent": getattr(agent, "_cloned_from", None), "mutation": getattr(agent, "mut", None),
        "lr": agent.lr, "temperature": agent.sampling_temperature, "num_generations": agent.num_generations,
        "kl_coef": agent.kl_coef, "batch_size": agent.batch_size,
        "selection_threshold": agent.selection_threshold, "selection_top_fraction": agent.selection_top_fraction,
    }


def _clean(d: dict[str, float]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _info(verbose: bool, msg: str, *args: Any) -> None:
    if verbose:
        log.info(msg, *args)
