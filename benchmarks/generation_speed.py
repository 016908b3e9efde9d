"""Generation throughput: ``SelfSFT.sample`` vs plain batched HF ``generate`` vs AgileRL GRPO's HF path.

All methods sample from the same weights with the same LoRA shape (r=16, all-linear, dropout 0; the adapters
start as a no-op), see the same prompts (held-out capitals prompts rendered with the tokenizer's chat template,
checked to be token-identical), draw K completions per prompt with the same sampling settings (temperature 0.8,
top-p 1, no top-k, ``max_new_tokens``) and stop on the same token ids (``agilerl_selfsft.data.chat.turn_end_token_ids``).

- ``ours``: ``SelfSFT.sample(prompts, K)``: the decode loop of ``agilerl_selfsft.generation.decode`` (shared prompt
  prefix prefilled once, each prompt prefilled once for its K rows, finished rows dropped, freed rows refilled
  with waiting prompts, LoRA folded into a copy of the weights), up to ``generation_batch_size`` live rows;
- ``loop_refill`` / ``loop_dropped`` / ``loop_shared`` / ``loop_plain``: the same loop with one step after
  another switched off (LoRA folding; refilling; dropping finished rows; sharing the prefill): the ablation,
  what each step buys;
- ``step_no_reserve`` / ``step_no_fold`` / ``step_multinomial``: ``ours`` with the decode step's own speed-ups
  switched off one after another (the KV cache's reserved room; grouped query heads folded onto their KV heads;
  the inverse-CDF draw, replaced by ``torch.multinomial``): ``step_multinomial`` is the decode step as it was
  before them;
- ``hf``: plain batched ``generate`` on the same actor: prompts left-padded, each repeated K times, the same
  rows per call as ours;
- ``grpo``: ``GRPO.get_action(prompt_dicts, training=True)`` with ``use_vllm=False``: one ``generate`` call per
  prompt on that prompt repeated ``group_size = K`` times (prompt dicts built as AgileRL's ``ReasoningGym`` does);
- ``vllm`` / ``vllm_compiled``: ``SelfSFT.sample`` with ``generation_engine="vllm"`` (the engine holds the merged
  weights; eager, or with vLLM's compilation). They need vLLM: run them with ``.venv-vllm/bin/python`` (``make
  test-vllm`` builds it), one of them per process. The result also records one weight sync after a learn step
  (``vllm_sync_seconds``).

Generated tokens are counted the same way for all: per row, completion tokens up to and including the first stop
token (the whole row when it never stopped). FLOP utilisation = tokens/s × 2·N / the machine's measured fp32
matmul rate (N = the base model's parameters; LoRA and attention FLOPs are not counted). Peak memory: the
process's peak RSS during each call above its RSS before it (``/proc/self/clear_refs``), or max allocated on GPU.

The ceiling: tokens/s of one decode step of the bare base model (no LoRA, no sampling, no prefill, no
finished rows) at a fixed number of rows, after a prefill of the first prompt; no generation loop can beat it at
that many live rows on this machine.

Each method is warmed up once, then timed ``--repeats`` times, interleaved, with ``torch.manual_seed(--seed)``
before every run. Run from the repository root::

    .venv/bin/python benchmarks/generation_speed.py                   # 16 prompts, K=4, 32 new tokens
    .venv/bin/python benchmarks/generation_speed.py --prompts 64 -k 8 --repeats 1 --tag k8x64
    .venv/bin/python benchmarks/generation_speed.py --quick           # a tiny smoke run

Writes ``generation_speed[_TAG].json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
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
from agilerl_selfsft.data.chat import collate, render_prompt, turn_end_token_ids
from agilerl_selfsft.data.tasks import CAPITALS_DIR

import argparse
import contextlib
import copy
import json
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable

import torch
from agilerl.algorithms.grpo import GRPO
from agilerl.llm_envs.base import apply_chat_template
from peft import LoraConfig
from transformers import GenerationConfig

from machine import (
    command_line, environment_markdown, machine_info, machine_load, matmul_gflops, nproc, peak_rss_mib, reset_peak_rss,
)
from agilerl_selfsft.generation import decode

MODEL = "smollm2-135m-instruct"
EVAL_FILE = CAPITALS_DIR / "eval.jsonl"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "results"
DEFAULTS = {"prompts": 16, "k": 4, "max_new_tokens": 32, "repeats": 3}
QUICK = {"prompts": 2, "k": 2, "max_new_tokens": 8, "repeats": 1}
TEMPERATURE = 0.8
METHODS = {
    "ours": "SelfSFT.sample (decode loop: all of the below + LoRA folded into the weights)",
    "loop_refill": "decode loop, shared prefill, finished rows dropped, freed rows refilled",
    "loop_dropped": "decode loop, shared prefill, finished rows dropped",
    "loop_shared": "decode loop, shared prefill, finished rows decode on",
    "loop_plain": "decode loop, every row prefilled, finished rows decode on",
    "step_no_reserve": "SelfSFT.sample's loop without the reserved KV cache (torch.cat per step)",
    "step_no_fold": "... and without folded query heads (the cache copied per query head)",
    "step_multinomial": "... and with torch.multinomial (the decode step before these three)",
    "hf": "plain batched HF generate (prompts × K rows per call)",
    "grpo": "GRPO.get_action (AgileRL HF path: one generate per prompt)",
    "vllm": "SelfSFT.sample, vLLM engine (merged weights, eager; needs vLLM: .venv-vllm)",
    "vllm_compiled": "SelfSFT.sample, vLLM engine (merged weights, vLLM's compilation on)",
}
VLLM_METHODS = ("vllm", "vllm_compiled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tokens/s of SelfSFT.sample vs plain HF generate vs AgileRL GRPO.")
    parser.add_argument("--prompts", type=int, help=f"held-out prompts to use (default {DEFAULTS['prompts']})")
    parser.add_argument("--k", "-k", type=int, help=f"completions per prompt, K (default {DEFAULTS['k']})")
    parser.add_argument("--max-new-tokens", type=int, help=f"longest completion (default {DEFAULTS['max_new_tokens']})")
    parser.add_argument("--repeats", type=int, help=f"timed runs per method (default {DEFAULTS['repeats']})")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--batch-rows", type=int, default=128, help="rows per batch for ours and hf (default 128)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the model's dtype; the 2N bound is that dtype's matmul rate (default float32)")
    parser.add_argument("--vllm-memory", type=float, default=0.2,
                        help="vLLM's gpu_memory_utilization (on CPU: the share of host memory it takes; default 0.2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed set before every run (default 0)")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="default benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="tiny fast run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("prompts", "k", "max_new_tokens", "repeats", "threads", "batch_rows"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    args.methods = [m for m in args.methods.split(",") if m]
    if unknown := set(args.methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    if set(VLLM_METHODS) <= set(args.methods):  # on CPU vLLM counts the first engine's memory against the second's
        parser.error(f"run {' and '.join(VLLM_METHODS)} in separate processes: one vLLM engine per process")
    return args


def lora_config() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def grpo_prompt_dicts(tokenizer: Any, chats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Prompt dicts as AgileRL's ReasoningGym yields them (``input_ids``/``attention_mask`` of shape [1, L])."""
    dicts = []
    for chat in chats:
        # ReasoningGym formats each message with str.format: escape the braces so the chat passes verbatim.
        template = [{"role": m["role"], "content": str(m["content"]).replace("{", "{{").replace("}", "}}")} for m in chat]
        encoded = apply_chat_template(template, "", "", tokenizer)
        dicts.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "text": None})
    return dicts


def count_completion_tokens(new_tokens: torch.Tensor, stop_ids: list[int]) -> tuple[int, list[bool]]:
    """Tokens per row up to and including the first stop token (the whole row if none)."""
    is_stop = torch.isin(new_tokens, torch.tensor(stop_ids, device=new_tokens.device))
    has_stop = is_stop.any(dim=1)
    lengths = torch.where(has_stop, is_stop.int().argmax(dim=1) + 1, torch.full_like(has_stop, new_tokens.shape[1], dtype=torch.long))
    return int(lengths.sum()), [bool(x) for x in has_stop]


def plain_hf_generate(agent: SelfSFT, texts: list[str], k: int, rows: int, stop_ids: list[int]) -> tuple[int, list[bool], int]:
    """Batched ``generate``: prompts left-padded, each repeated K times, ``rows`` rows per call."""
    tok, tokens, finished, calls = agent._tokenizer, 0, [], 0
    per_call = max(1, rows // k)
    config = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0, max_new_tokens=agent.max_new_tokens,
                              eos_token_id=stop_ids, pad_token_id=agent.pad_token_id)
    for begin in range(0, len(texts), per_call):
        batch = tok(texts[begin : begin + per_call], add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
        ids, mask = batch["input_ids"].repeat_interleave(k, 0), batch["attention_mask"].repeat_interleave(k, 0)
        with torch.inference_mode(), agent.select_adapter("actor"):
            out = agent.actor.generate(input_ids=ids.to(agent.device), attention_mask=mask.to(agent.device), generation_config=config)
        n, f = count_completion_tokens(out[:, ids.shape[1]:], stop_ids)
        tokens, finished, calls = tokens + n, finished + f, calls + 1
    return tokens, finished, calls


def timed(fn: Callable[[], tuple[int, list[bool], int]], seed: int) -> dict[str, Any]:
    """Run one sampling call: tokens, wall and CPU seconds, stopped rows, generate calls, peak memory above start."""
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_mib() if reset_peak_rss() else None
    torch.manual_seed(seed)
    cpu, start = time.process_time(), time.perf_counter()
    tokens, finished, calls = fn()
    if gpu:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "tokens": tokens, "seconds": seconds, "cpu_seconds": cpu, "rows": len(finished), "finished_rows": sum(finished),
        "generate_calls": calls,
        "peak_mib_above_start": (torch.cuda.max_memory_allocated() / 2**20 if gpu else
                                 (peak_rss_mib() - rss_before if rss_before is not None else None)),
    }


def run_loop(agent: SelfSFT, texts: list[str], k: int, stop_ids: list[int], **options: bool) -> tuple[int, list[bool], int]:
    sampling = decode.Sampling(agent.max_new_tokens, stop_ids, temperature=TEMPERATURE, top_p=1.0, top_k=0)
    with agent.select_adapter("actor"):
        gen = decode.sample(agent.actor, agent._tokenizer, texts, k, sampling, agent.generation_batch_size, **options)
    return gen.num_tokens, [f for row in gen.finished for f in row], len(gen.batch_rows)


@contextlib.contextmanager
def multinomial_draws() -> Any:
    """The decode loop drawing tokens with ``torch.multinomial`` (as it did before the inverse-CDF draw)."""
    draw = decode.draw
    decode.draw = lambda probs: torch.multinomial(probs, 1).squeeze(1)
    try:
        yield
    finally:
        decode.draw = draw


def run_step_ablation(agent: SelfSFT, texts: list[str], k: int, stop_ids: list[int], multinomial: bool = False,
                      **options: bool) -> tuple[int, list[bool], int]:
    with multinomial_draws() if multinomial else contextlib.nullcontext():
        return run_loop(agent, texts, k, stop_ids, **options)


def run_ours(agent: SelfSFT, chats: list[list[dict[str, Any]]], k: int) -> tuple[int, list[bool], int]:
    gen = agent.sample(chats, num_generations=k)
    return gen.num_tokens, [f for row in gen.finished for f in row], len(gen.batch_rows)


def run_grpo(agent: GRPO, prompt_dicts: list[dict[str, Any]], stop_ids: list[int]) -> tuple[int, list[bool], int]:
    result = agent.get_action([dict(d) for d in prompt_dicts], training=True)  # get_action may mutate the dicts
    tokens, finished = 0, []
    for prompt, ids in zip(prompt_dicts, result.completion_ids, strict=True):
        n, f = count_completion_tokens(ids[:, prompt["input_ids"].shape[1]:], stop_ids)  # ids = prompt + completion
        tokens, finished = tokens + n, finished + f
    return tokens, finished, len(prompt_dicts)


@torch.inference_mode()
def decode_ceiling(model: Any, prompt_ids: list[int], rows: int, steps: int = 12) -> dict[str, float]:
    """Steady-state tokens/s of the bare model's decode step at ``rows`` rows (median step of ``steps``)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids] * rows, device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, token, times = out.past_key_values, out.logits[:, -1].argmax(-1), []
    for step in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        token = model(input_ids=token[:, None], past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[2:])
    return {"rows": rows, "step_ms": 1000 * step_s, "tokens_per_s": rows / step_s}


def summarise(runs: list[dict[str, Any]], flops_per_token: float, roof_gflops: float) -> dict[str, Any]:
    rate = statistics.median(r["tokens"] / r["seconds"] for r in runs)
    return {
        "median_tokens_per_s": rate,
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_tokens": statistics.median(r["tokens"] for r in runs),
        "achieved_gflops": rate * flops_per_token / 1e9,
        "fraction_of_2N_bound": rate * flops_per_token / 1e9 / roof_gflops,
        "median_tokens_per_cpu_s": statistics.median(r["tokens"] / r["cpu_seconds"] for r in runs),
        "peak_mib_above_start": max((r["peak_mib_above_start"] or 0) for r in runs),
        "rows": runs[0]["rows"],
        "generate_calls_per_run": runs[0]["generate_calls"],
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["methods"]
    lines = [
        f"# Generation speed: {s['prompts']} prompts × K={s['k']}, up to {s['max_new_tokens']} new tokens",
        "",
        f"Model `{s['model']}` ({s['dtype']}, N = {s['n_params'] / 1e6:.1f} M parameters, {s['device']}), LoRA r=16 "
        f"all-linear, temperature {s['temperature']}, {s['repeats']} timed run(s) per method after a warm-up on 2 prompts, "
        f"interleaved. Measured {s['dtype']} matmul rate: **{s['matmul_gflops']:.0f} GFLOP/s**, so the 2·N bound is "
        f"{s['matmul_gflops'] * 1e9 / (2 * s['n_params']):.0f} tokens/s.",
        "",
        "| Method | batches / run | rows | tokens / run | median s | median tokens/s | × GRPO | × plain HF "
        "| GFLOP/s | % of 2·N bound | peak MiB above start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in m.items():
        vs = {o: (f"{r['median_tokens_per_s'] / m[o]['median_tokens_per_s']:.2f}×" if o in m else "–") for o in ("grpo", "hf")}
        peak = f"{r['peak_mib_above_start']:.0f}" if r["peak_mib_above_start"] else "–"
        lines.append(
            f"| {METHODS[key]} | {r['generate_calls_per_run']} | {r['rows']} | {r['median_tokens']:.0f} | "
            f"{r['median_seconds']:.2f} | **{r['median_tokens_per_s']:.1f}** | {vs['grpo']} | {vs['hf']} | "
            f"{r['achieved_gflops']:.1f} | {100 * r['fraction_of_2N_bound']:.0f}% | {peak} |"
        )
    lines += [
        "",
        f"Tokens: completion tokens per row up to and including the first stop token {s['stop_token_ids']} "
        f"({', '.join(s['stop_tokens'])}), prompt and padding excluded. Seconds: wall time around the whole call. "
        "GFLOP/s = tokens/s × 2·N (prefill, padding and finished-row work are overhead, not counted). Peak MiB above "
        "start: the process's peak RSS during the call minus its RSS before it. Different methods draw random "
        "numbers in a different order, so they sample different completions; compare tokens/s.",
        "",
        "Ceiling: one decode step of the bare base model (no LoRA, sampling, prefill or finished rows) at a fixed "
        "number of live rows: "
        + ", ".join(f"{c['rows']} rows {c['tokens_per_s']:.0f} tokens/s ({100 * c['fraction_of_2N_bound']:.0f}%)"
                    for c in result.get("ceiling", [])) + ".",
        "",
        f"Process peak RSS (all agents loaded): {result['peak_rss_mib']:.0f} MiB.",
        "",
        "## Notes",
        "",
        *([f"- {n}" for n in result["notes"]] or ["- none"]),
        "",
        *environment_markdown(result),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def log(message: str) -> None:
        print(f"[generation_speed] {message}", flush=True)

    tasks = load_tasks(EVAL_FILE)
    while len(tasks) < args.prompts:  # more prompts than the file has: cycle through it
        tasks = tasks + tasks
    chats = [t.messages for t in tasks[: args.prompts]]

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    log(f"loading {MODEL} ({args.dtype}), {args.threads} thread(s); measuring the {args.dtype} matmul rate")
    roof = matmul_gflops(dtype=dtype)  # the bound of the dtype the run computes in
    model, tokenizer = load_model(MODEL, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    stop_ids = turn_end_token_ids(tokenizer)
    texts = [render_prompt(tokenizer, chat) for chat in chats]
    prompt_dicts = grpo_prompt_dicts(tokenizer, chats)
    for text, d in zip(texts, prompt_dicts, strict=True):
        if tokenizer(text, add_special_tokens=False)["input_ids"] != d["input_ids"][0].tolist():
            raise RuntimeError(f"the two paths render different prompt tokens for {text!r}")

    shared = {"pad_token_id": tokenizer.pad_token_id, "pad_token": tokenizer.pad_token,
              "top_p": 1.0, "top_k": 0, "use_vllm": False, "device": device, "seed": args.seed}
    ours = SelfSFT(actor_network=copy.deepcopy(model), lora_config=lora_config(), tokenizer=tokenizer,
                   num_generations=args.k, max_new_tokens=args.max_new_tokens, generation_batch_size=args.batch_rows,
                   sampling_temperature=TEMPERATURE, **shared)
    engines = {}
    for name in VLLM_METHODS:
        if name in args.methods:
            engines[name] = SelfSFT(actor_network=copy.deepcopy(model), lora_config=lora_config(), tokenizer=tokenizer,
                                    num_generations=args.k, max_new_tokens=args.max_new_tokens, generation_engine="vllm",
                                    vllm_config={"enforce_eager": name == "vllm", "gpu_memory_utilization": args.vllm_memory},
                                    max_model_len=2048, sampling_temperature=TEMPERATURE, **shared)
    grpo = None
    if "grpo" in args.methods:
        grpo = GRPO(actor_network=copy.deepcopy(model), lora_config=lora_config(), group_size=args.k,
                    max_output_tokens=args.max_new_tokens, temperature=TEMPERATURE, **shared)
        grpo.generation_config.eos_token_id = list(stop_ids)  # GRPO sets no eos of its own: give it ours
    log("ceiling: the bare model's decode step at fixed row counts")
    ceiling_rows = sorted({r for r in (1, 16, 64, 128, 256) if r <= max(args.batch_rows, args.prompts * args.k)}
                          | {min(args.batch_rows, args.prompts * args.k)})
    prompt_ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    ceiling = [decode_ceiling(model, prompt_ids, r) for r in ceiling_rows]
    for c in ceiling:
        c["fraction_of_2N_bound"] = c["tokens_per_s"] * 2 * n_params / 1e9 / roof
    del model
    k, rows = args.k, args.batch_rows
    def method_calls(chats: list, texts: list[str], prompt_dicts: list[dict[str, Any]]) -> dict[str, Callable]:
        calls = {
            "ours": lambda: run_ours(ours, chats, k),
            "loop_refill": lambda: run_loop(ours, texts, k, stop_ids, merge_lora=False),
            "loop_dropped": lambda: run_loop(ours, texts, k, stop_ids, merge_lora=False, refill=False),
            "loop_shared": lambda: run_loop(ours, texts, k, stop_ids, merge_lora=False, refill=False,
                                            drop_finished=False),
            "loop_plain": lambda: run_loop(ours, texts, k, stop_ids, merge_lora=False, refill=False,
                                           drop_finished=False, share_prompts=False),
            "step_no_reserve": lambda: run_step_ablation(ours, texts, k, stop_ids, reserve_cache=False),
            "step_no_fold": lambda: run_step_ablation(ours, texts, k, stop_ids, reserve_cache=False, fold_heads=False),
            "step_multinomial": lambda: run_step_ablation(ours, texts, k, stop_ids, multinomial=True,
                                                          reserve_cache=False, fold_heads=False),
            "hf": lambda: plain_hf_generate(ours, texts, k, rows, stop_ids),
            "grpo": lambda: run_grpo(grpo, prompt_dicts, stop_ids),
            **{name: (lambda agent=agent: run_ours(agent, chats, k)) for name, agent in engines.items()},
        }
        return {name: calls[name] for name in args.methods}

    calls = method_calls(chats, texts, prompt_dicts)

    load_before = machine_load()
    log("warm-up (every method on the first 2 prompts)")
    for fn in method_calls(chats[:2], texts[:2], prompt_dicts[:2]).values():
        timed(fn, args.seed)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
    for rep in range(args.repeats):
        for name, fn in calls.items():
            r = timed(fn, args.seed)
            runs[name].append(r)
            log(f"repeat {rep + 1}/{args.repeats} {name:11s}: {r['tokens']} tokens in {r['seconds']:.2f} s = "
                f"{r['tokens'] / r['seconds']:.1f} tokens/s ({r['finished_rows']}/{r['rows']} rows stopped)")
    load_after = machine_load()
    syncs = {}
    for name, agent in engines.items():  # what one learn step costs the engine: one push of the merged weights
        engine = agent.generation_engine_instance()
        batch = collate(tokenizer, [[*chats[0], {"role": "assistant", "content": "Paris."}]])
        agent.learn(batch)
        before = engine.sync_seconds
        with agent.select_adapter("actor"):
            engine.sync(agent)
        syncs[name] = round(engine.sync_seconds - before, 3)
        log(f"{name}: one weight sync after a learn step took {syncs[name]:.2f} s")

    notes = []
    busiest = max((x["loadavg_1_5_15"] or [0])[0] for x in (load_before, load_after))
    if busiest > nproc():
        notes.append(f"The machine was busy (1-minute load average up to {busiest:.1f} on {nproc()} CPUs): timings are noisy.")
    methods = {name: summarise(r, 2 * n_params, roof) for name, r in runs.items()}
    result = {
        "benchmark": "generation_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "settings": {
            "model": MODEL, "dtype": args.dtype, "device": device, "n_params": n_params, "matmul_gflops": roof,
            "prompts": args.prompts, "k": args.k, "rows": args.prompts * args.k, "max_new_tokens": args.max_new_tokens,
            "temperature": TEMPERATURE, "top_p": 1.0, "top_k": 0, "repeats": args.repeats, "warmup_runs": 1,
            "seed": args.seed, "threads": args.threads, "vllm_memory": args.vllm_memory, "quick": args.quick, "batch_rows": args.batch_rows,
            "stop_token_ids": stop_ids, "stop_tokens": tokenizer.convert_ids_to_tokens(stop_ids),
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        },
        "machine": machine_info(args.threads),
        "machine_load": {"before": load_before, "after": load_after},
        "methods": methods,
        "ceiling": ceiling,
        "vllm_sync_seconds": syncs,
        "peak_rss_mib": peak_rss_mib(),
        "notes": notes,
    }
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = "generation_speed" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    for name, r in methods.items():
        log(f"{name:11s} {r['median_tokens_per_s']:7.1f} tokens/s  {100 * r['fraction_of_2N_bound']:.0f}% of the 2N bound")
    log(f"wrote {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
