"""The ``agilerl-selfsft`` command: ``train`` a run from a YAML config, ``eval`` or ``export`` a checkpoint.

Mistakes the user can fix end in one ``error:`` line and exit status 2, with nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
from pathlib import Path

from agilerl_selfsft import _compat  # noqa: F401  (before agilerl)
from agilerl_selfsft.config import Config, load_config
from agilerl_selfsft.errors import SelfSFTError

DEMO_CONFIG = Path(__file__).parent / "configs" / "capitals.yaml"
#: config keys a ``--resume`` may change: they do not change what the run computes
RESUME_MAY_CHANGE = ("iterations", "threads", "device", "reward_timeout")


def build(config: Config):  # noqa: ANN201 -- (pop, env)
    """Load the model and data of ``config`` and make the population and the environment."""
    import torch
    from peft import LoraConfig

    from agilerl_selfsft.algorithm.selfsft import SelfSFT
    from agilerl_selfsft.data.readers import load_conversations
    from agilerl_selfsft.data.tasks import drop_long_prompts, load_tasks
    from agilerl_selfsft.env.gym import SelfSFTGym
    from agilerl_selfsft.rewards import import_function, resolve_reward
    from agilerl_selfsft.models import load_model, resolve_device, resolve_model_path

    # Everything that can be wrong with the inputs is checked before the model is loaded.
    train, held_out = load_tasks(config.task.train, config.bad_rows), load_tasks(config.task.eval, config.bad_rows)
    static = config.static_data
    static_data = load_conversations(static.path, config.bad_rows) if static is not None else None
    agent = import_function(config.agent, "agent") if config.agent is not None else None
    reward = None if agent is not None else config.reward
    if reward is not None:
        resolve_reward(reward)
    if config.eval_reward is not None:
        resolve_reward(config.eval_reward)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load_model(resolve_model_path(config.model), device=device)
    context = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    limit = config.max_prompt_tokens or context - config.max_new_tokens
    train, skipped_train = drop_long_prompts(train, tokenizer, limit, config.long_prompts, "train")
    held_out, skipped_eval = drop_long_prompts(held_out, tokenizer, limit, config.long_prompts, "held-out")
    if skipped_train or skipped_eval:
        logging.getLogger("agilerl_selfsft").warning(
            "Skipped prompts longer than %d tokens: %d train, %d held-out.", limit, skipped_train, skipped_eval
        )
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules, task_type="CAUSAL_LM",
    )
    s, g = config.selection, config.generation
    vllm_settings = {"gpu_memory_utilization": g.gpu_memory_utilization, "enforce_eager": g.enforce_eager}
    pop = SelfSFT.population(
        config.population, pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
        tokenizer=tokenizer, lora_config=lora, lr=config.lr, batch_size=config.batch_size,
        num_generations=config.num_generations, sampling_temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, kl_coef=config.kl_coef, seed=config.seed,
        selection_threshold=s.threshold, selection_top_fraction=s.top_fraction,
        hp_config=_hp_config(config) if config.population > 1 else None, device=device,
        generation_engine=g.engine, fold_lora=g.fold_lora, vllm_config=vllm_settings,
        max_model_len=limit + config.max_new_tokens,
        gradient_checkpointing=device.type == "cuda",  # on CPU it only costs time at these sizes
    )
    env = SelfSFTGym(
        train, held_out, tokenizer, reward, agent=agent, data_batch_size_per_gpu=config.batch_size,
        selection=s.strategy, threshold=s.threshold, top_k=s.top_k, top_fraction=s.top_fraction,
        keep_truncated=s.keep_truncated, prefer_shorter=s.prefer_shorter, replay_capacity=s.replay_capacity,
        replay_ratio=s.replay_ratio, accumulate=config.restart_from_base,
        sampling=config.sampling.model_dump() if config.sampling is not None else None,
        static_data=static_data, static_fraction=static.fraction if static else 0.5,
        static_final_fraction=static.final_fraction if static else None,
        static_decay_iterations=static.decay_iterations if static else 1, seed=config.seed,
        reward_timeout=config.reward_timeout,
        eval_reward=config.eval_reward,
    )
    return pop, env


def _hp_config(config: Config):  # noqa: ANN202 -- agilerl HyperparameterConfig
    from agilerl.algorithms.core.registry import HyperparameterConfig, RLParameter

    ints = ("num_generations", "batch_size")
    agent_name = {"temperature": "sampling_temperature"}  # the config's name -> the agent's attribute
    return HyperparameterConfig(**{
        agent_name.get(name, name): RLParameter(
            min=int(lo) if name in ints else lo, max=int(hi) if name in ints else hi,
            dtype=int if name in ints else float,
        )
        for name, (lo, hi) in config.evolution.hp.items()
    })


def build_evolution(config: Config):  # noqa: ANN201 -- (TournamentSelection, Mutations) or (None, None)
    """AgileRL's tournament selection and mutations for a population config (none for one agent)."""
    from agilerl.hpo.mutation import Mutations
    from agilerl.hpo.tournament import TournamentSelection

    if config.population < 2:
        return None, None
    e = config.evolution
    tournament = TournamentSelection(
        tournament_size=e.tournament_size, elitism=e.elitism, population_size=config.population
    )
    mutation = Mutations(
        no_mutation=e.no_mutation, architecture=e.architecture, new_layer_prob=0.0, parameters=e.parameters,
        activation=e.activation, rl_hp=e.rl_hp, mutate_elite=e.mutate_elite, rand_seed=config.seed,
    )
    return tournament, mutation


def train(
    config_path: str | Path, output: str | Path | None = None, resume: bool = False, overwrite: bool = False
) -> Path:
    """Run ``agilerl-selfsft train``; returns the run directory.

    The folder is checked (read only) first; then its lock is taken
    (:func:`~agilerl_selfsft.training.rundir.run_lock`: another trainer there is refused, naming its PID), the
    checks are made again, and only then is anything in it written or deleted.
    """
    from agilerl_selfsft.training.rundir import run_lock

    config = load_config(config_path)
    out = Path(output) if output else Path("runs") / Path(config_path).stem
    _check_output(config, out, resume, overwrite)  # a refused folder is left as it is, without a lock file
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the top new folder
    with run_lock(out):
        try:
            return _train_locked(config, out, resume, overwrite)
        except SelfSFTError:
            if created is not None and not (out / "checkpoints" / "latest").exists():
                shutil.rmtree(created, ignore_errors=True)  # a run that finished no iteration leaves nothing behind
            raise


def _check_output(config: Config, out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that holds a run without ``--resume`` / ``--overwrite``, a run to resume whose
    config differs, or (with ``--overwrite``) a folder that is not wholly a run of ours."""
    from agilerl_selfsft.training.rundir import check_ours, holds_run

    if not holds_run(out):
        return
    if not (resume or overwrite):
        raise SelfSFTError(
            f"output dir {out} holds another run; pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite:
        check_ours(out)  # names what is not ours; nothing is deleted
    if resume and (out / "config.json").exists():
        # A resumed run may be extended (iterations), given other threads, another device or another reward
        # timeout; anything else would mix runs.
        saved = json.loads((out / "config.json").read_text())
        # a key an older config.json lacks had its default then
        defaults = {k: f.default for k, f in Config.model_fields.items() if not f.is_required()}
        changed = sorted(k for k, v in config.model_dump(mode="json").items()
                         if k not in RESUME_MAY_CHANGE and saved.get(k, defaults.get(k)) != v)
        if changed:
            raise SelfSFTError(f"cannot resume {out}: {', '.join(changed)} differ from the run's config.json")


def _train_locked(config: Config, out: Path, resume: bool, overwrite: bool) -> Path:
    """``train`` inside the run directory's lock: the folder checked again, the run, the report."""
    from agilerl_selfsft.training.loop import finetune_llm_selfsft
    from agilerl_selfsft.training.report import plot, table
    from agilerl_selfsft.training.rundir import clear_run, holds_run

    _check_output(config, out, resume, overwrite)  # it may have changed before the lock was ours
    pop, env = build(config)
    tournament, mutation = build_evolution(config)
    if overwrite and holds_run(out):
        clear_run(out)  # what the old run wrote, nothing else (it checks that again)
    (out / "config.json").write_text(config.model_dump_json(indent=2))
    _, history = finetune_llm_selfsft(
        pop, env, init_hp=config.model_dump(), iterations=config.iterations,
        prompts_per_iteration=config.prompts_per_iteration, sft_epochs=config.sft_epochs,
        eval_samples=config.eval_samples, eval_greedy=config.eval_greedy, checkpoint_path=out,
        keep_checkpoints=config.keep_checkpoints, seed=config.seed, resume=resume,
        stop_after_empty=config.stop_after_empty, tournament=tournament, mutation=mutation,
        evo_steps=config.evolution.evo_steps, eval_temperature=config.temperature,
        restart_from_base=config.restart_from_base,
    )
    print("\n" + table(history))
    print(f"\nreward curve: {plot(history, out / 'reward_curve.png')}")
    print(f"run directory: {out}  (metrics.jsonl, checkpoints/latest)")
    return out


def evaluate_checkpoint(checkpoint: str | Path, config_path: str | Path) -> dict[str, float]:
    """Run ``agilerl-selfsft eval``: the held-out reward of a checkpoint."""
    from agilerl_selfsft.training.evaluation import evaluate

    from agilerl_selfsft.training.checkpoints import load_adapters, verify_checkpoint

    verify_checkpoint(checkpoint)  # cheap checks first, before the model is loaded
    config = load_config(config_path)
    pop, env = build(config.model_copy(update={"population": 1}))
    load_adapters(pop[0], checkpoint)
    return evaluate(pop[0], env, config.eval_samples, config.eval_greedy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agilerl-selfsft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="self-train a model from a YAML config")
    p_train.add_argument("--config", required=True, help=f"YAML config (the demo: {DEMO_CONFIG})")
    p_train.add_argument("--output", help="run directory, defaults to runs/<config name>")
    p_train.add_argument("--resume", action="store_true",
                         help="continue the run in --output from its last complete iteration")
    p_train.add_argument("--overwrite", action="store_true", help="replace the run in --output")
    p_eval = sub.add_parser("eval", help="held-out reward of a checkpoint")
    p_eval.add_argument("--checkpoint", required=True, help="a checkpoint folder, e.g. RUN/checkpoints/latest")
    p_eval.add_argument("--config", required=True, help="the run's YAML config (model, task, reward)")
    p_export = sub.add_parser("export", help="export a checkpoint's actor: PEFT adapter, merged model or GGUF file")
    p_export.add_argument("--checkpoint", required=True, help="a checkpoint folder, e.g. RUN/checkpoints/latest")
    p_export.add_argument("--format", required=True, help="adapter (PEFT adapter folder), merged (full 16-bit "
                          "transformers folder with tokenizer) or gguf (one .gguf file; Llama-architecture models)")
    p_export.add_argument("--output", required=True, help="the folder (adapter, merged) or .gguf file (gguf) to create")
    p_export.add_argument("--dtype", help="merged only: float16 (default) or bfloat16")
    p_export.add_argument("--outtype", help="gguf only: f32, f16 (default), bf16 or q8_0")
    p_export.add_argument("--base-model",
                          help="the base model (name, folder or hub id); defaults to the one the checkpoint records")
    p_export.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "deepspeed", "DeepSpeed", "accelerate", "jax"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # SIGTERM (a scheduler stopping the job) ends the run like Ctrl-C: the last complete iteration stays.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.command == "train":
            if args.resume and args.overwrite:
                raise SelfSFTError("--resume and --overwrite exclude each other")
            train(args.config, args.output, resume=args.resume, overwrite=args.overwrite)
        elif args.command == "eval":
            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.config), indent=2))
        else:
            from agilerl_selfsft.export.formats import export_checkpoint

            out = export_checkpoint(args.checkpoint, args.output, args.format, dtype=args.dtype, outtype=args.outtype,
                                    base_model=args.base_model, overwrite=args.overwrite)
            print(f"exported {args.checkpoint} as {args.format}: {out}")
    except SelfSFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run keeps its last complete iteration; continue it with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
