"""The ``agilerl-selfsft`` command: ``train`` a run from a YAML config, ``eval`` or ``export`` a checkpoint.

Mistakes the user can fix end in one ``error:`` line and exit status 2, with nothing half-written. Nothing
heavy (torch, transformers, agilerl's algorithms) is imported before the arguments are parsed, so ``--help``
and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.version import __version__

DEMO_CONFIG = Path(__file__).parent / "configs" / "capitals.yaml"
DESCRIPTION = "Self-train a language model on its own best samples (AgileRL): train, eval or export."
#: config keys a ``--resume`` may change: they do not change what the run computes
RESUME_MAY_CHANGE = ("iterations", "threads", "device", "reward_timeout", "samples", "wandb", "tensorboard")
#: config keys that name input files: a resume compares the files' contents (task_files.json), not their paths
FILE_KEYS = ("task", "static_data")


def build(config: Any):  # noqa: ANN201 -- (pop, env)
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
    folders = [config.folder] if config.folder is not None else []  # a reward module may sit next to the config
    agent = import_function(config.agent, "agent", folders) if config.agent is not None else None
    reward = None if agent is not None else config.reward
    if reward is not None:
        resolve_reward(reward, folders=folders)
    if config.eval_reward is not None:
        resolve_reward(config.eval_reward, folders=folders)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load_model(resolve_model_path(config.model), dtype=config.dtype, device=device)
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
    for member in pop:  # a plain attribute (clones and checkpoints carry it)
        member.reference_cache_mb = config.reference_cache_mb
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

    The run folder follows :func:`~agilerl_selfsft.training.rundir.run_folder`'s rules, as the Python entry
    point does (checked read-only first, then under the folder's lock; a run that completes no iteration
    leaves nothing behind); a resume must also have the run's config, but for :data:`RESUME_MAY_CHANGE`.
    """
    from agilerl_selfsft.config import load_config
    from agilerl_selfsft.training.rundir import check_run_folder, run_folder

    config = load_config(config_path)
    out = _run_dir(config_path, output)
    check_run_folder(out, resume, overwrite)  # a refused folder is left as it is, without a lock file
    if resume:
        _check_same_run(config, out)
    with run_folder(out, resume, overwrite):
        if resume:
            _check_same_run(config, out)  # it may have changed before the lock was ours
        return _train_locked(config, out, resume)


def _run_dir(config_path: str | Path, output: str | Path | None) -> Path:
    """The run directory: ``output``, defaulting to ``runs/<config name>``."""
    return Path(output) if output else Path("runs") / Path(config_path).stem


def _check_same_run(config: Any, out: Path) -> None:
    """Refuse to resume ``out`` with a config that computes another run: a key other than
    :data:`RESUME_MAY_CHANGE` differs, or an input file's content (not its path) does."""
    from agilerl_selfsft.config import Config

    if not (out / "config.json").exists():
        return
    saved = json.loads((out / "config.json").read_text())
    # a key an older config.json lacks had its default then
    defaults = {k: f.default for k, f in Config.model_fields.items() if not f.is_required()}
    files = out / "task_files.json"  # older runs lack it: their paths are compared
    by_content = FILE_KEYS if files.exists() else ()
    changed = sorted(k for k, v in _without_paths(config.model_dump(mode="json"), by_content).items()
                     if k not in RESUME_MAY_CHANGE
                     and _without_paths(saved, by_content).get(k, defaults.get(k)) != v)
    if by_content:
        recorded, now = json.loads(files.read_text()), _task_files(config)
        changed += sorted(f"{key} (content)" for key in {*recorded, *now} if recorded.get(key) != now.get(key))
    if changed:
        raise SelfSFTError(f"cannot resume {out}: {', '.join(changed)} differ from the run's config.json")


def _without_paths(dump: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``dump`` with the file paths under ``keys`` left out (their contents are compared instead)."""
    out = dict(dump)
    if "task" in keys:
        out.pop("task", None)
    if "static_data" in keys and isinstance(out.get("static_data"), dict):
        out["static_data"] = {k: v for k, v in out["static_data"].items() if k != "path"}
    return out


def _task_files(config: Any) -> dict[str, str]:
    """The SHA-256 of each input file (or ``save_to_disk`` folder) of ``config``, by its key."""
    from agilerl_selfsft.data.readers import content_sha256

    files = {"task.train": config.task.train, "task.eval": config.task.eval}
    if config.static_data is not None:
        files["static_data.path"] = config.static_data.path
    return {key: content_sha256(path) for key, path in files.items()}


def _train_locked(config: Any, out: Path, resume: bool) -> Path:
    """``train`` inside the run folder: the resolved config logged and saved, the run, the report."""
    import yaml

    from agilerl_selfsft.training.loop import finetune_llm_selfsft
    from agilerl_selfsft.training.report import plot, table

    logging.getLogger("agilerl_selfsft").info(
        "Config (resolved):\n%s", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
    resolved = resolved_settings(config)
    pop, env = build(config)
    tournament, mutation = build_evolution(config)
    (out / "config.json").write_text(json.dumps({**config.model_dump(mode="json"), "resolved": resolved}, indent=2))
    (out / "task_files.json").write_text(json.dumps(_task_files(config), indent=2))
    _, history = finetune_llm_selfsft(
        pop, env, init_hp=config.model_dump(), iterations=config.iterations,
        prompts_per_iteration=config.prompts_per_iteration, sft_epochs=config.sft_epochs,
        eval_samples=config.eval_samples, eval_greedy=config.eval_greedy, checkpoint_path=out,
        keep_checkpoints=config.keep_checkpoints, seed=config.seed, resume=resume,
        stop_after_empty=config.stop_after_empty, tournament=tournament, mutation=mutation,
        evo_steps=config.evolution.evo_steps, eval_temperature=config.temperature,
        restart_from_base=config.restart_from_base, samples_per_iteration=config.samples.per_iteration,
        log_examples=config.samples.log_examples, wb=config.wandb is not None,
        wandb_config=config.wandb.model_dump(exclude_none=True) if config.wandb is not None else None,
        tensorboard=config.tensorboard,
    )
    print("\n" + table(history))
    print(f"\nreward curve: {plot(history, out / 'reward_curve.png')}")
    print(f"run directory: {out}  (metrics.jsonl, samples/, checkpoints/latest)")
    return out


def resolved_settings(config: Any) -> dict[str, Any]:
    """What ``auto`` settings of ``config`` became on this machine (device; dtype and the probe behind it), and the
    OpenMP wait policy the process runs under (None: unset), logged and saved in the run's ``config.json`` under
    ``resolved``. ``OMP_WAIT_POLICY=PASSIVE`` on a CPU run is warned about: it slows the small matmuls of decoding
    and LoRA (``benchmarks/results/wait_policy.md``)."""
    import torch

    from agilerl_selfsft.models import resolve_device
    from agilerl_selfsft.precision import resolve_dtype

    log = logging.getLogger("agilerl_selfsft")
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)  # the probe measures at the run's thread count
    _, why = resolve_dtype(config.dtype, device)
    log.info("Device %s, dtype %s (%s: %s).", device, why["dtype"], why["asked"], why["reason"])
    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    if device.type == "cpu" and (wait_policy or "").upper() == "PASSIVE":
        log.warning("OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep between the many small matmuls of decoding and "
                    "LoRA (on 2 cores, training passes and sampling took 1.3-1.5x as long); unset it unless other "
                    "processes share these cores")
    return {"device": str(device), "dtype": why, "omp_wait_policy": wait_policy}


def evaluate_checkpoint(checkpoint: str | Path, config_path: str | Path) -> dict[str, float]:
    """Run ``agilerl-selfsft eval``: the held-out metrics of a checkpoint, as the run's ``metrics.jsonl`` records
    them for it (the same prompts, samples per prompt, temperature and seed)."""
    from agilerl_selfsft.config import load_config
    from agilerl_selfsft.training.checkpoints import load_adapters, verify_checkpoint
    from agilerl_selfsft.training.evaluation import evaluate

    verify_checkpoint(checkpoint)  # cheap checks first, before the model is loaded
    config = load_config(config_path)
    pop, env = build(config.model_copy(update={"population": 1}))
    load_adapters(pop[0], checkpoint)
    print(f"eval_reward: the mean reward of {config.eval_samples} sample(s) per held-out prompt "
          f"({len(env.eval_tasks)} prompts) at temperature {config.temperature:g}, seed {config.seed}"
          + ("; eval_reward_greedy: one greedy answer per prompt" if config.eval_greedy else "")
          + " (what metrics.jsonl records for this checkpoint)", file=sys.stderr)
    return evaluate(pop[0], env, config.eval_samples, config.eval_greedy, temperature=config.temperature,
                    seed=config.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agilerl-selfsft", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
        kept = args.command == "train" and (_run_dir(args.config, args.output) / "checkpoints" / "latest").exists()
        print("interrupted: " + ("the run keeps its last complete iteration; continue it with --resume" if kept
                                 else "no iteration was complete, so nothing was kept"), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
