"""Generation throughput: ``SelfSFT.sample`` (batched across prompts) vs AgileRL GRPO's HF path.

Both agents wrap their own copy of the same base weights with the same LoRA shape (r=16, all-linear,
dropout 0; the adapters start as a no-op, so both sample from the base model), see the same prompts (the
held-out capitals prompts rendered with the tokenizer's chat template, checked to be token-identical), draw
K completions per prompt with the same sampling settings (temperature 0.8, top-p 1, no top-k,
``max_new_tokens``) and stop on the same token ids (``agilerl_selfsft.chat.turn_end_token_ids``).

- ours: ``SelfSFT.sample(prompts, K)``: the prompts are left-padded into one batch and repeated K times, so one
  ``generate`` call serves ``prompts × K`` rows (up to ``generation_batch_size`` rows per call).
- GRPO: ``GRPO.get_action(prompt_dicts, training=True)`` with ``use_vllm=False``: one ``generate`` call per
  prompt, on that prompt repeated ``group_size = K`` times. Prompt dicts are built as AgileRL's
  ``ReasoningGym`` builds them (``agilerl.llm_envs.base.apply_chat_template``).

Generated tokens are counted the same way for both: per row, the completion tokens (prompt and padding
excluded) up to and including the first stop token, or the whole row when it never stopped. That is what
``Generations.num_tokens`` counts for ours; GRPO returns prompt + completion ids, so the prompt is sliced off
and the same rule applied (AgileRL's own action-mask count is recorded alongside, for reference).

Each method is warmed up once, then timed ``--repeats`` times, interleaved (ours, GRPO, ours, GRPO…), with
``torch.manual_seed(--seed)`` before every run. Seconds are wall time around the whole call for both.

Run from the repository root::

    .venv/bin/python benchmarks/generation_speed.py            # defaults: 16 prompts, K=4, 32 new tokens
    .venv/bin/python benchmarks/generation_speed.py --quick    # a tiny smoke run

Writes ``generation_speed.json`` and ``generation_speed.md`` to ``--output-dir``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python benchmarks/generation_speed.py``): put benchmarks/ on the path for ``machine``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# agilerl_selfsft must be imported before anything from agilerl: it fixes agilerl 2.10.0's LLM-dependency flag
# and switches liger off on machines without CUDA.
import agilerl_selfsft  # noqa: I001  (import order matters)
from agilerl_selfsft import SelfSFT, load_model, load_tasks
from agilerl_selfsft.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.tasks import CAPITALS_DIR

import argparse
import copy
import json
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import torch
from agilerl.algorithms.grpo import GRPO
from agilerl.llm_envs.base import apply_chat_template
from peft import LoraConfig

from machine import command_line, environment_markdown, machine_info, machine_load, nproc, peak_rss_mib

MODEL = "smollm2-135m-instruct"
EVAL_FILE = CAPITALS_DIR / "eval.jsonl"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "results"
DEFAULTS = {"prompts": 16, "k": 4, "max_new_tokens": 32, "repeats": 3}
QUICK = {"prompts": 2, "k": 2, "max_new_tokens": 8, "repeats": 1}
TEMPERATURE = 0.8
OURS, GRPO_NAME = "SelfSFT.sample (batched)", "GRPO.get_action (AgileRL HF path)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tokens/s of SelfSFT.sample vs AgileRL GRPO's HF generation on the same model, K and prompts."
    )
    parser.add_argument("--prompts", type=int, help=f"held-out prompts to use (default {DEFAULTS['prompts']})")
    parser.add_argument("--k", "-k", type=int, help=f"completions per prompt, K (default {DEFAULTS['k']})")
    parser.add_argument(
        "--max-new-tokens", type=int, help=f"longest completion (default {DEFAULTS['max_new_tokens']})"
    )
    parser.add_argument("--repeats", type=int, help=f"timed runs per method (default {DEFAULTS['repeats']})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed set before every run (default 0)")
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where the results go (default benchmarks/results)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny fast run: {', '.join(f'{k}={v}' for k, v in QUICK.items())} (explicit flags still win)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("prompts", "k", "max_new_tokens", "repeats", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------------------------
# agents and prompts


def lora_config() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def grpo_prompt_dicts(tokenizer: Any, chats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Prompt dicts as AgileRL's ReasoningGym yields them (``input_ids``/``attention_mask`` of shape [1, L])."""
    dicts = []
    for chat in chats:
        # ReasoningGym formats each message with str.format(question=..., answer=...): escape the braces so the
        # chat is passed through verbatim.
        template = [
            {"role": m["role"], "content": str(m["content"]).replace("{", "{{").replace("}", "}}")} for m in chat
        ]
        encoded = apply_chat_template(template, "", "", tokenizer)
        dicts.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "text": None})
    return dicts


def count_completion_tokens(new_tokens: torch.Tensor, stop_ids: list[int]) -> tuple[int, list[bool]]:
    """Tokens per row up to and including the first stop token (the whole row if none) — as hf_generate counts."""
    is_stop = torch.isin(new_tokens, torch.tensor(stop_ids, device=new_tokens.device))
    has_stop = is_stop.any(dim=1)
    full = torch.full_like(has_stop, new_tokens.shape[1], dtype=torch.long)
    lengths = torch.where(has_stop, is_stop.int().argmax(dim=1) + 1, full)
    return int(lengths.sum()), [bool(x) for x in has_stop]


# ---------------------------------------------------------------------------------------------------------------
# runs


def run_ours(agent: SelfSFT, chats: list[list[dict[str, Any]]], k: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    cpu, start = time.process_time(), time.perf_counter()
    gen = agent.sample(chats, num_generations=k)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finished = [f for row in gen.finished for f in row]
    return {
        "tokens": gen.num_tokens,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "inner_seconds": gen.seconds,
        "rows": len(finished),
        "finished_rows": sum(finished),
        "generate_calls": -(-len(chats) // max(1, agent.generation_batch_size // k)),
    }


def run_grpo(agent: GRPO, prompt_dicts: list[dict[str, Any]], stop_ids: list[int], seed: int) -> dict[str, Any]:
    obs = [dict(d) for d in prompt_dicts]  # get_action may mutate the dicts it is given
    torch.manual_seed(seed)
    cpu, start = time.process_time(), time.perf_counter()
    result = agent.get_action(obs, training=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens, finished, mask_tokens, mask_explained = 0, [], 0, 0
    pad = agent.pad_token_id
    for prompt, ids, mask in zip(prompt_dicts, result.completion_ids, result.action_masks, strict=True):
        # ids are prompt + completion (the prompt repeated group_size times); keep the completion only.
        prompt_len = prompt["input_ids"].shape[1]
        n, f = count_completion_tokens(ids[:, prompt_len:], stop_ids)
        tokens += n
        finished += f
        mask_tokens += int(mask.sum())
        # What AgileRL's mask holds when it gets no prompt length: every non-pad token after the first position.
        mask_explained += int((ids[:, 1:] != pad).sum())
    return {
        "tokens": tokens,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows": len(finished),
        "finished_rows": sum(finished),
        "generate_calls": len(prompt_dicts),
        "agilerl_action_mask_tokens": mask_tokens,
        "agilerl_mask_is_all_non_pad_tokens": mask_tokens == mask_explained,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["tokens"] / r["seconds"] for r in runs]
    return {
        "median_tokens_per_s": statistics.median(rates),
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "tokens": [r["tokens"] for r in runs],
        "median_tokens": statistics.median(r["tokens"] for r in runs),
        "tokens_per_s": rates,
        "seconds": [r["seconds"] for r in runs],
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "median_tokens_per_cpu_s": statistics.median(r["tokens"] / r["cpu_seconds"] for r in runs),
        "cpu_seconds": [r["cpu_seconds"] for r in runs],
        "rows": runs[0]["rows"],
        "finished_rows": [r["finished_rows"] for r in runs],
        "generate_calls_per_run": runs[0]["generate_calls"],
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------------------------
# output


def markdown(result: dict[str, Any]) -> str:
    s, o, g = result["settings"], result["methods"]["ours"], result["methods"]["grpo"]
    lines = [
        "# Generation speed: SelfSFT.sample vs AgileRL GRPO (HF path)",
        "",
        f"{s['prompts']} prompts × K={s['k']}, up to {s['max_new_tokens']} new tokens, temperature {s['temperature']}, "
        f"{s['repeats']} timed run(s) per method after one warm-up, interleaved. Model `{s['model']}` "
        f"({s['dtype']}), LoRA r=16 all-linear on separate copies of the same weights.",
        "",
        "| Method | generate calls / run | rows | tokens / run | stopped rows | median s | median tokens/s "
        "| median CPU s | median tokens / CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in ((OURS, o), (GRPO_NAME, g)):
        tokens = "/".join(str(t) for t in sorted(set(r["tokens"])))
        finished = "/".join(str(t) for t in sorted(set(r["finished_rows"])))
        lines.append(
            f"| {name} | {r['generate_calls_per_run']} | {r['rows']} | {tokens} | {finished} | "
            f"{r['median_seconds']:.2f} | **{r['median_tokens_per_s']:.1f}** | {r['median_cpu_seconds']:.2f} | "
            f"{r['median_tokens_per_cpu_s']:.1f} |"
        )
    lines += [
        "",
        f"**Speed-up (median tokens/s, ours / GRPO): {result['speedup_tokens_per_s']:.2f}×**  "
        f"(median wall-time ratio GRPO / ours: {result['wall_time_ratio']:.2f}×; "
        f"tokens per CPU-second ratio: {result['speedup_tokens_per_cpu_s']:.2f}×)",
        "",
        "Stopped rows: rows that ended on a stop token before the token limit. CPU s: process CPU time of the "
        "call, all threads (it includes threads spinning at barriers, so with several threads it is not pure work).",
        "",
        f"Peak RSS of the whole process (both agents loaded): {result['peak_rss_mib']:.0f} MiB.",
        "",
        "Tokens are counted identically for both: completion tokens per row up to and including the first stop "
        f"token (prompt and padding excluded). Stop token ids for both: {s['stop_token_ids']} "
        f"({', '.join(s['stop_tokens'])}). Seconds are wall time around the whole call "
        "(`SelfSFT.sample` includes prompt rendering, tokenisation and decoding; `GRPO.get_action` receives "
        "pre-tokenised prompt dicts and returns ids). Seed "
        f"{s['seed']} set with `torch.manual_seed` before every run.",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {n}" for n in result["notes"]] or ["- none"]
    return "\n".join(lines + ["", *environment_markdown(result)])


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def log(message: str) -> None:
        print(f"[generation_speed] {message}", flush=True)

    tasks = load_tasks(EVAL_FILE)
    if args.prompts > len(tasks):
        raise SystemExit(f"--prompts {args.prompts}: {EVAL_FILE} has only {len(tasks)} prompts")
    tasks = tasks[: args.prompts]
    chats = [t.messages for t in tasks]

    log(f"loading {MODEL} (fp32), {args.threads} thread(s)")
    model, tokenizer = load_model(MODEL, dtype=torch.float32)
    stop_ids = turn_end_token_ids(tokenizer)
    notes: list[str] = []

    # Same prompt tokens for both paths.
    prompt_dicts = grpo_prompt_dicts(tokenizer, chats)
    for chat, d in zip(chats, prompt_dicts, strict=True):
        ours_ids = tokenizer(render_prompt(tokenizer, chat), add_special_tokens=False)["input_ids"]
        if ours_ids != d["input_ids"][0].tolist():
            raise RuntimeError(f"the two paths render different prompt tokens for {chat!r}")
    prompt_tokens = sum(int(d["input_ids"].shape[1]) for d in prompt_dicts)

    log("building SelfSFT and GRPO on separate copies of the same weights")
    shared = {
        "pad_token_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
        "temperature": TEMPERATURE,
        "top_p": 1.0,
        "top_k": 0,
        "use_vllm": False,
        "device": device,
        "seed": args.seed,
    }  # a fresh copy of the weights and a fresh LoraConfig for each agent
    ours = SelfSFT(
        actor_network=copy.deepcopy(model), lora_config=lora_config(), tokenizer=tokenizer,
        num_generations=args.k, max_new_tokens=args.max_new_tokens, **shared,
    )
    grpo = GRPO(
        actor_network=copy.deepcopy(model), lora_config=lora_config(), group_size=args.k,
        max_output_tokens=args.max_new_tokens, **shared,
    )
    del model
    # GRPO's generation config (built in _setup_generation) sets no eos: generate would fall back to the model's
    # own generation_config. Give it exactly our stop ids.
    grpo.generation_config.eos_token_id = list(stop_ids)
    if ours.generation_batch_size < args.k:
        notes.append(f"generation_batch_size {ours.generation_batch_size} < K: SelfSFT makes one call per prompt")

    log(f"stop ids {stop_ids} {tokenizer.convert_ids_to_tokens(stop_ids)}; GRPO generation config: "
        + json.dumps({k: v for k, v in grpo.generation_config.to_diff_dict().items() if k != "transformers_version"}))

    load_before = machine_load()
    log(f"machine load before the runs: {json.dumps(load_before)}")
    timed = {
        "ours": lambda: run_ours(ours, chats, args.k, args.seed),
        "grpo": lambda: run_grpo(grpo, prompt_dicts, stop_ids, args.seed),
    }
    log("warm-up")
    for run in timed.values():
        run()

    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "grpo": []}
    for rep in range(args.repeats):
        for name, run in timed.items():
            r = run()
            r["order"] = len(runs["ours"]) + len(runs["grpo"])
            runs[name].append(r)
            log(f"repeat {rep + 1}/{args.repeats} {name:4s}: {r['tokens']} tokens in {r['seconds']:.2f} s "
                f"= {r['tokens'] / r['seconds']:.1f} tokens/s ({r['finished_rows']}/{r['rows']} rows stopped)")

    load_after = machine_load()
    cpus = nproc()
    busiest = max((x["loadavg_1_5_15"] or [0])[0] for x in (load_before, load_after))
    if busiest > cpus:
        notes.append(
            f"The machine was busy: 1-minute load average up to {busiest:.1f} on {cpus} CPU(s) (see machine_load in "
            "the JSON), so other processes competed for the cores and wall times are noisy (a descheduled thread "
            "stalls every multi-threaded op, which costs most where there are the most forward passes); both "
            "methods ran interleaved, but rerun on an idle machine (or with --threads 1) to confirm."
        )
    peak_rss = peak_rss_mib()
    methods = {"ours": summarise(runs["ours"]), "grpo": summarise(runs["grpo"])}
    methods["ours"]["name"], methods["grpo"]["name"] = OURS, GRPO_NAME
    g = methods["grpo"]
    if any(r["agilerl_action_mask_tokens"] != r["tokens"] for r in g["runs"]):
        why = (
            "it is exactly every non-pad token of prompt + completion after the first position: the prompt dicts (as "
            "ReasoningGym yields them) carry no initial_prompt_len, so build_completion_mask gets prompt_len=None "
            "and masks the prompt in too"
            if all(r["agilerl_mask_is_all_non_pad_tokens"] for r in g["runs"])
            else "see agilerl.utils.llm_utils.build_completion_mask"
        )
        notes.append(
            "AgileRL's own action mask from GRPO.get_action would count "
            f"{[r['agilerl_action_mask_tokens'] for r in g['runs']]} tokens per run, not {g['tokens']}: {why}; "
            f"it also drops every token equal to the pad id {tokenizer.pad_token_id} ({tokenizer.pad_token!r}, "
            "which is a stop id here). This benchmark does not use it: it slices the prompt off GRPO's ids and "
            "counts completion tokens up to and including the first stop, as for SelfSFT."
        )
    if methods["ours"]["median_tokens"] != g["median_tokens"]:
        notes.append(
            "The two paths sample different completions (batched left-padded rows vs per-prompt groups draw "
            "random numbers in a different order), so token counts differ; compare tokens/s."
        )
    result = {
        "benchmark": "generation_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "settings": {
            "model": MODEL,
            "dtype": "float32",
            "device": device,
            "prompts_file": str(EVAL_FILE.relative_to(Path(agilerl_selfsft.__file__).resolve().parent.parent)),
            "prompts": args.prompts,
            "prompt_tokens": prompt_tokens,
            "k": args.k,
            "rows": args.prompts * args.k,
            "max_new_tokens": args.max_new_tokens,
            "temperature": TEMPERATURE,
            "top_p": 1.0,
            "top_k": 0,
            "repeats": args.repeats,
            "warmup_runs": 1,
            "seed": args.seed,
            "threads": args.threads,
            "quick": args.quick,
            "stop_token_ids": stop_ids,
            "stop_tokens": tokenizer.convert_ids_to_tokens(stop_ids),
            "selfsft_generation_batch_size": ours.generation_batch_size,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        "machine": machine_info(args.threads),
        "machine_load": {"before": load_before, "after": load_after},
        "methods": methods,
        "speedup_tokens_per_s": methods["ours"]["median_tokens_per_s"] / g["median_tokens_per_s"],
        "wall_time_ratio": g["median_seconds"] / methods["ours"]["median_seconds"],
        "speedup_tokens_per_cpu_s": methods["ours"]["median_tokens_per_cpu_s"] / g["median_tokens_per_cpu_s"],
        "peak_rss_mib": peak_rss,
        "notes": notes,
    }

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "generation_speed.md").write_text(markdown(result))
    log(
        f"ours {methods['ours']['median_tokens_per_s']:.1f} tokens/s, GRPO {g['median_tokens_per_s']:.1f} tokens/s, "
        f"speed-up {result['speedup_tokens_per_s']:.2f}x; peak RSS {peak_rss:.0f} MiB"
    )
    log(f"wrote {out / 'generation_speed.json'} and {out / 'generation_speed.md'}")
    return result


if __name__ == "__main__":
    main()
