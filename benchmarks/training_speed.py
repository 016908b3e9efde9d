"""Training throughput: ``SelfSFT.learn`` (length-bucketed) vs AgileRL's ``SFT.learn`` on the same batches.

Both agents wrap their own copy of the same base weights (the embedded SmolLM2-135M-Instruct, in ``--dtype``:
by default ``auto``, what the library picks on this machine, recorded with the probe's reason) with the
same LoRA shape (r=16, alpha 32, all-linear, dropout 0) and the same adapter values (ours are copied into
AgileRL's), the same optimizer settings (AgileRL's AdamW, ``lr``, ``max_grad_norm`` 0.1), AgileRL's default
gradient checkpointing (on; ``--no-gradient-checkpointing`` turns it off for both) and one micro-batch per batch
(AgileRL's default: ``micro_batch_size_per_gpu`` = batch size, one optimizer step per ``learn``).

The batches are built once and fed to both, in the same order: right-padded ``SFTPrompts`` (``input_ids``,
``attention_mask``, ``prompt_lengths``; no ``loss_mask``, so both mask the loss by ``prompt_lengths``, as on
an ``SFTGym`` batch). A row is a capitals prompt rendered with the tokenizer's chat template (its default
system prompt included), then a reply of N content tokens (windows of a fixed English paragraph), then
``<|im_end|>`` and the newline the template puts after it. Two shapes:

- ``uniform``: every row the same length (prompts of one token length, replies of ``--uniform-reply`` tokens);
- ``mixed``: realistic mixed lengths, each reply drawn from: half short answers (3–10 tokens), a quarter
  medium (20–60), a quarter long explanations (80–120).

Each agent learns once on a warm-up batch, then ``--repeats`` rounds go through every batch, the two agents
interleaved (the order alternating from round to round). Seconds are wall time around ``learn`` (AgileRL's
includes its ``gc.collect()`` per call). **Tokens are the real (non-padding) tokens of prompt + reply of the
batch rows** — the same count for both methods, whatever each computes — and tokens/s is their sum over the
timed calls divided by the summed seconds. Padding is the share of the positions each method puts through the
model that are padding: AgileRL runs every row at the batch's padded width; ours reports it from ``learn``.
MFU = tokens/s × 6·N / the matmul rate measured here (``machine.matmul_gflops``, the mean of a measurement
before and after the runs), N = the base model's parameters. Both agents take optimizer steps on the same
batches from the same weights, so their losses should agree call by call: the largest relative difference is
recorded as a check that they do the same optimisation. MFU is against the matmul rate *of the dtype used*.

``--compile-loss`` adds a third agent, SelfSFT with its head and losses
(:func:`agilerl_selfsft.algorithm.learning.token_losses`: the lm_head on the labelled positions, the
cross-entropy, the KL) under ``torch.compile(dynamic=True)``, interleaved with the other two; its warm-up call
includes the compilation, and its seconds are recorded beside the eager warm-up's. ``--unshared`` adds SelfSFT with
``share_prompt_prefix`` off (every row's prompt run whole; see :mod:`agilerl_selfsft.algorithm.shared_prefix`):
the prefix is shared only without gradient checkpointing, so compare it with ``--no-gradient-checkpointing``.

Run from the repository root::

    .venv/bin/python benchmarks/training_speed.py                       # defaults: 3 batches × 16 rows, 2 rounds
    .venv/bin/python benchmarks/training_speed.py --quick --threads 1   # a tiny smoke run
    .venv/bin/python benchmarks/training_speed.py --no-gradient-checkpointing --unshared --tag shared_prefix

Writes ``training_speed.json`` and ``training_speed.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python benchmarks/training_speed.py``): put benchmarks/ on the path for ``machine``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# agilerl_selfsft must be imported before anything from agilerl: it fixes agilerl 2.10.0's LLM-dependency flag
# and switches liger off on machines without CUDA.
import agilerl_selfsft  # noqa: I001  (import order matters)
from agilerl_selfsft import SelfSFT, load_model, load_tasks
from agilerl_selfsft.algorithm.learning import token_losses
from agilerl_selfsft.precision import resolve_dtype
from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.data.tasks import CAPITALS_DIR

import argparse
import gc
import json
import random
import statistics
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import torch
from agilerl.algorithms.sft import SFT
from peft import LoraConfig

from machine import command_line, environment_markdown, machine_info, machine_load, matmul_gflops, nproc, peak_rss_mib

MODEL = "smollm2-135m-instruct"
TASKS_FILE = CAPITALS_DIR / "train.jsonl"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "results"
DEFAULTS = {"rows": 16, "batches": 3, "repeats": 2, "uniform_reply": 40, "longest_reply": 120}
QUICK = {"rows": 4, "batches": 1, "repeats": 1, "uniform_reply": 8, "longest_reply": 24}
LR = 1e-4
OURS, SFT_NAME = "SelfSFT.learn (length buckets)", "SFT.learn (AgileRL 2.10.0)"
COMPILED = "SelfSFT.learn, head and losses compiled"
UNSHARED = "SelfSFT.learn, no shared prompt prefix"
NAMES = {"ours": OURS, "sft": SFT_NAME, "compiled": COMPILED, "unshared": UNSHARED}
EXTRA_ARMS = ("compiled", "unshared")  # SelfSFT variants compared with ours
# Reply text: windows of this paragraph (a fixed text, so the batches are the same on every run).
PARAGRAPH = (
    "Paris is the capital and largest city of France. It lies on the river Seine, in the north of the country, "
    "at the heart of the Ile-de-France region. The city has been a major centre of finance, diplomacy, commerce, "
    "fashion, science and the arts since the seventeenth century. Its museums, among them the Louvre, receive "
    "millions of visitors every year, and its railway stations link it to the rest of Europe. The capital of a "
    "country is usually the seat of its government, although some countries divide these functions between "
    "several cities: the Netherlands, for example, has its capital in Amsterdam while the government sits in The "
    "Hague. Answering a question about a capital well means naming the city first and explaining only if asked."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tokens/s of SelfSFT.learn vs AgileRL's SFT.learn on the same model and the same batches."
    )
    parser.add_argument("--rows", type=int, help=f"rows per batch (default {DEFAULTS['rows']})")
    parser.add_argument("--batches", type=int, help=f"distinct batches per shape (default {DEFAULTS['batches']})")
    parser.add_argument("--repeats", type=int, help=f"timed rounds over the batches (default {DEFAULTS['repeats']})")
    parser.add_argument(
        "--uniform-reply", type=int, help=f"reply tokens of every uniform row (default {DEFAULTS['uniform_reply']})"
    )
    parser.add_argument(
        "--longest-reply", type=int, help=f"longest mixed reply in tokens (default {DEFAULTS['longest_reply']})"
    )
    parser.add_argument("--micro-batch-tokens", type=int, default=None, help="SelfSFT's token cap per forward pass")
    parser.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="turn gradient checkpointing off for both agents"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
        help="the base weights' dtype for both agents (default auto: what the library would choose here)",
    )
    parser.add_argument(
        "--compile-loss", action="store_true",
        help="add an arm: SelfSFT with its head and losses (token_losses) under torch.compile(dynamic=True)",
    )
    parser.add_argument(
        "--unshared", action="store_true",
        help="add an arm: SelfSFT with share_prompt_prefix off (every row's prompt run whole); sharing applies "
        "only without gradient checkpointing",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files (training_speed_<tag>.json)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches and the adapters (default 0)")
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
    for key in ("rows", "batches", "repeats", "uniform_reply", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.longest_reply < 4:
        parser.error("--longest-reply must be >= 4")
    return args


# ---------------------------------------------------------------------------------------------------------------
# batches


def mixed_reply_length(rng: random.Random, longest: int) -> int:
    """Half short answers (3–10 tokens), a quarter medium (20–60), a quarter long (80–120), scaled to ``longest``."""
    scale = longest / 120
    low, high = rng.choice([(3, 10), (3, 10), (20, 60), (80, 120)])
    return max(3, round(rng.randint(low, high) * scale))


class BatchBuilder:
    """Right-padded SFTPrompts batches of chat-template prompts and replies of exact token lengths."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.text = tokenizer(PARAGRAPH, add_special_tokens=False)["input_ids"]
        # what the template puts after an assistant reply: <|im_end|> and a newline
        marker = "SELFSFT_MARK"
        chat = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
        self.tail = tokenizer(rendered[rendered.rfind(marker) + len(marker) :], add_special_tokens=False)["input_ids"]
        self.prompts = [
            tokenizer(render_prompt(tokenizer, t.messages), add_special_tokens=False)["input_ids"]
            for t in load_tasks(TASKS_FILE)
        ]

    def reply(self, content_tokens: int) -> list[int]:
        start = self.rng.randrange(len(self.text))
        ids = [self.text[(start + i) % len(self.text)] for i in range(content_tokens)]
        return ids + self.tail

    def batch(self, prompts: list[list[int]], reply_lengths: list[int]) -> dict[str, Any]:
        rows = [(p, self.reply(n)) for p, n in zip(prompts, reply_lengths, strict=True)]
        width = max(len(p) + len(r) for p, r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            attention_mask[i, : len(p) + len(r)] = 1
        return {
            "prompt": [""] * len(rows),
            "response": [""] * len(rows),
            "prompt_lengths": [len(p) for p, _ in rows],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }

    def uniform(self, rows: int, reply: int) -> dict[str, Any]:
        length, _ = Counter(len(p) for p in self.prompts).most_common(1)[0]
        same = [p for p in self.prompts if len(p) == length]
        return self.batch([self.rng.choice(same) for _ in range(rows)], [reply] * rows)

    def mixed(self, rows: int, longest: int) -> dict[str, Any]:
        prompts = [self.rng.choice(self.prompts) for _ in range(rows)]
        return self.batch(prompts, [mixed_reply_length(self.rng, longest) for _ in range(rows)])


def describe(batches: list[dict[str, Any]]) -> dict[str, Any]:
    lengths = [int(x) for b in batches for x in b["attention_mask"].sum(1)]
    replies = [
        int(m.sum()) - p for b in batches for m, p in zip(b["attention_mask"], b["prompt_lengths"], strict=True)
    ]
    real = sum(lengths)
    padded = sum(b["input_ids"].numel() for b in batches)
    return {
        "batches": len(batches),
        "rows_per_batch": int(batches[0]["input_ids"].shape[0]),
        "row_tokens_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
        "reply_tokens_min_median_max": [min(replies), statistics.median(replies), max(replies)],
        "prompt_tokens_min_median_max": [
            min(p for b in batches for p in b["prompt_lengths"]),
            statistics.median(p for b in batches for p in b["prompt_lengths"]),
            max(p for b in batches for p in b["prompt_lengths"]),
        ],
        "real_tokens": real,
        "padded_width_tokens": padded,
        "padding_of_padded_batches": 1 - real / padded,
    }


# ---------------------------------------------------------------------------------------------------------------
# agents and runs


def lora_config() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def actor_lora(agent: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in agent.actor.named_parameters() if "lora_" in n and ".actor." in n}


def count_forwards(agent: SelfSFT) -> list[int]:
    """Count the forward passes of ``agent.learn`` (one per length bucket)."""
    real, calls = agent._selfsft_loss, []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    agent._selfsft_loss = counting
    return calls


def timed_learn(agent: Any, batch: dict[str, Any], device: str) -> tuple[float, dict[str, float]]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = agent.learn(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def summarise(runs: list[dict[str, Any]], n_params: int, gflops: float) -> dict[str, Any]:
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    computed = sum(r["computed_tokens"] for r in runs)
    rate = tokens / seconds
    return {
        "calls": len(runs),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": rate,
        "median_call_tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
        "median_call_seconds": statistics.median(r["seconds"] for r in runs),
        "computed_tokens": computed,
        "padding": 1 - tokens / computed,
        "mfu_6n": rate * 6 * n_params / (gflops * 1e9),
        "forward_passes_per_call": statistics.median(r["forward_passes"] for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------------------------
# output


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Training speed: SelfSFT.learn vs AgileRL SFT.learn",
        "",
        f"Same batches for both ({s['rows']} rows each, {s['batches']} per shape), one warm-up call each, then "
        f"{s['repeats']} interleaved round(s) over the batches. Model `{s['model']}` ({s['dtype']}, "
        f"N = {s['n_params'] / 1e6:.1f} M parameters), LoRA r=16 all-linear on separate copies of the same weights, "
        f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, one micro-batch (one optimizer "
        f"step) per call, {s['device']}, {s['threads']} thread(s).",
        "",
        "Tokens = real (non-padding) prompt + reply tokens of the batch rows, counted the same for both. "
        "Padding = share of the positions a method puts through the model that are padding. "
        f"MFU = tokens/s × 6·N / {result['matmul_gflops']:.1f} GFLOP/s (the {s['dtype']} matmul rate measured "
        f"here: the bound of the dtype used). dtype: {s['dtype']} ({s.get('dtype_choice', {}).get('reason', 'asked for')}).",
        "",
        "| shape | method | calls | tokens | forward passes / call | padding | median s / call | tokens/s | MFU (6·N) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, sc in result["scenarios"].items():
        for key in [k for k in NAMES if k in sc]:
            r, name = sc[key], NAMES[key]
            lines.append(
                f"| {shape} | {name} | {r['calls']} | {r['tokens']} | {r['forward_passes_per_call']:g} | "
                f"{r['padding']:.1%} | {r['median_call_seconds']:.2f} | **{r['tokens_per_s']:.1f}** | "
                f"{r['mfu_6n']:.1%} |"
            )
    lines.append("")
    for shape, sc in result["scenarios"].items():
        b = sc["batches"]
        lines.append(
            f"- **{shape}: speed-up {sc['speedup']:.2f}×** (tokens/s, ours / AgileRL; goal ≥ {sc['goal']}×). Rows of "
            f"{b['row_tokens_min_median_max'][0]}–{b['row_tokens_min_median_max'][2]} tokens (median "
            f"{b['row_tokens_min_median_max'][1]:g}), replies {b['reply_tokens_min_median_max'][0]}–"
            f"{b['reply_tokens_min_median_max'][2]}; largest relative loss difference between the two, call by "
            f"call: {sc['max_relative_loss_difference']:.1e}."
        )
        if "compiled" in sc:
            lines.append(
                f"- {shape}, compiled head and losses: **{sc['compiled_speedup']:.2f}×** ours eager (largest relative "
                f"loss difference {sc['compiled_max_relative_loss_difference']:.1e})."
            )
        if "unshared" in sc:
            lines.append(
                f"- {shape}, the shared prompt prefix run once: **{1 / sc['unshared_speedup']:.2f}×** the same "
                f"learning with every row's prompt run whole (largest relative loss difference "
                f"{sc['unshared_max_relative_loss_difference']:.1e})."
            )
    if s.get("compile_loss"):
        w = s["warmup_seconds"]
        lines.append(f"- The warm-up call (compilation included) took {w['compiled']:.1f} s compiled against "
                     f"{w['ours']:.1f} s eager.")
    lines += [
        "",
        f"Peak RSS of the whole process (all agents loaded): {result['peak_rss_mib']:.0f} MiB.",
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
        print(f"[training_speed] {message}", flush=True)

    dtype, dtype_choice = resolve_dtype(args.dtype, device)
    dtype_name = dtype_choice["dtype"]
    log(f"loading {MODEL} ({dtype_name}: {dtype_choice['reason']}), {args.threads} thread(s), {device}")
    model, tokenizer = load_model(MODEL, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    twin, _ = load_model(MODEL, dtype=dtype)
    builder = BatchBuilder(tokenizer, args.seed)
    shapes = {
        "uniform": [builder.uniform(args.rows, args.uniform_reply) for _ in range(args.batches)],
        "mixed": [builder.mixed(args.rows, args.longest_reply) for _ in range(args.batches)],
    }
    warmup = builder.mixed(args.rows, args.longest_reply)

    log("building SelfSFT and SFT on separate copies of the same weights")
    checkpointing = not args.no_gradient_checkpointing
    shared = {
        "pad_token_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
        "batch_size": args.rows,
        "lr": LR,
        "device": device,
        "gradient_checkpointing": checkpointing,
    }
    def selfsft(network: Any) -> SelfSFT:
        return SelfSFT(actor_network=network, lora_config=lora_config(), tokenizer=tokenizer, seed=args.seed,
                       micro_batch_tokens=args.micro_batch_tokens, **shared)

    ours = selfsft(model)
    torch.manual_seed(args.seed)
    agents = {"ours": ours, "sft": SFT(actor_network=twin, lora_config=lora_config(), seed=args.seed, **shared)}
    if args.compile_loss:
        agents["compiled"] = selfsft(load_model(MODEL, dtype=dtype)[0])
        agents["compiled"].token_losses = torch.compile(token_losses, dynamic=True)
    if args.unshared:
        agents["unshared"] = selfsft(load_model(MODEL, dtype=dtype)[0])
        agents["unshared"].share_prompt_prefix = False
    with torch.no_grad():  # every agent starts from ours' adapter values
        for key, agent in agents.items():
            if key != "ours":
                for name, p in actor_lora(agent).items():
                    p.copy_(actor_lora(ours)[name])
    lora_params = sum(p.numel() for p in actor_lora(ours).values())
    forwards = {key: count_forwards(agent) for key, agent in agents.items() if key != "sft"}
    gc_start = time.perf_counter()
    gc.collect()
    gc_seconds = time.perf_counter() - gc_start

    load_before = machine_load()
    log(f"machine load before the runs: {json.dumps(load_before)}")
    gflops_before = matmul_gflops(dtype=dtype)
    log(f"{dtype_name} matmul: {gflops_before:.1f} GFLOP/s")

    def run(key: str, batch: dict[str, Any]) -> dict[str, Any]:
        counted = forwards.get(key, [])
        counted.clear()
        seconds, out = timed_learn(agents[key], batch, device)
        tokens = int(batch["attention_mask"].sum())
        if key != "sft":
            computed = round(out["tokens"] / (1 - out["padding"]))
            assert int(out["tokens"]) == tokens, (out["tokens"], tokens)
        else:
            computed = batch["input_ids"].numel()
        return {
            "seconds": seconds,
            "tokens": tokens,
            "computed_tokens": computed,
            "forward_passes": len(counted) if key != "sft" else 1,
            "loss": out["loss"],
        }

    log("warm-up")
    warmup_seconds = {key: run(key, warmup)["seconds"] for key in agents}

    scenarios: dict[str, Any] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {k: [] for k in agents} for s in shapes}
    for rep in range(args.repeats):
        for shape, batches in shapes.items():
            for i, batch in enumerate(batches):
                order = list(agents) if (rep + i) % 2 == 0 else list(reversed(agents))
                for key in order:
                    r = run(key, batch)
                    r["round"], r["batch"] = rep, i
                    runs[shape][key].append(r)
                    log(f"round {rep + 1}/{args.repeats} {shape} batch {i} {key:4s}: {r['tokens']} tokens in "
                        f"{r['seconds']:.2f} s = {r['tokens'] / r['seconds']:.1f} tokens/s, padding "
                        f"{1 - r['tokens'] / r['computed_tokens']:.1%}, loss {r['loss']:.4f}")

    gflops_after = matmul_gflops(dtype=dtype)
    gflops = (gflops_before + gflops_after) / 2
    load_after = machine_load()
    peak_rss = peak_rss_mib()
    for shape in shapes:
        o, f = (summarise(runs[shape][k], n_params, gflops) for k in ("ours", "sft"))
        diffs = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(o["runs"], f["runs"], strict=True)]
        scenarios[shape] = {
            "batches": describe(shapes[shape]),
            "ours": o,
            "sft": f,
            "speedup": o["tokens_per_s"] / f["tokens_per_s"],
            "goal": 1.0 if shape == "uniform" else 2.0,
            "max_relative_loss_difference": max(diffs),
        }
        for arm in (a for a in EXTRA_ARMS if a in agents):  # speed-up: the arm's tokens/s over ours
            c = summarise(runs[shape][arm], n_params, gflops)
            scenarios[shape][arm] = c
            scenarios[shape][f"{arm}_speedup"] = c["tokens_per_s"] / o["tokens_per_s"]
            scenarios[shape][f"{arm}_max_relative_loss_difference"] = max(
                abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(c["runs"], o["runs"], strict=True)
            )

    notes = [
        "6·N is the usual training-FLOP estimate per token (forward 2·N, backward 4·N). With LoRA the frozen base "
        "weights get no weight gradients (backward ≈ 2·N), but gradient checkpointing recomputes the forward "
        "(+2·N), so ≈ 6·N is also about the work done here. N counts the tied embedding / lm_head once "
        f"({n_params / 1e6:.1f} M); the LoRA adapters add {lora_params / 1e6:.2f} M trainable parameters.",
        "Beyond padding, the two differ in where they compute logits: AgileRL's SFT applies the lm_head (49152 × "
        "576) at every position of the padded batch, prompt and padding included; SelfSFT only at the positions "
        "that carry a label (the reply tokens).",
        f"AgileRL's SFT.learn starts with gc.collect() (and torch.cuda.empty_cache()); one gc.collect() took "
        f"{gc_seconds * 1000:.0f} ms in this process.",
    ]
    cpus = nproc()
    busiest = max((x["loadavg_1_5_15"] or [0])[0] for x in (load_before, load_after))
    if busiest > cpus:
        notes.append(
            f"The machine was busy: 1-minute load average up to {busiest:.1f} on {cpus} CPU(s); both methods ran "
            "interleaved, but rerun on an idle machine to confirm."
        )
    if args.quick:
        notes.append("--quick: a smoke run (tiny batches, one round); not a measurement.")

    result = {
        "benchmark": "training_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "settings": {
            "model": MODEL,
            "dtype": dtype_name,
            "dtype_choice": dtype_choice,
            "compile_loss": args.compile_loss,
            "unshared_arm": args.unshared,
            "warmup_seconds": warmup_seconds,
            "device": device,
            "n_params": n_params,
            "lora_trainable_params": lora_params,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "rows": args.rows,
            "batches": args.batches,
            "repeats": args.repeats,
            "warmup_calls": 1,
            "uniform_reply_tokens": args.uniform_reply,
            "mixed_reply_tokens": "half 3-10, a quarter 20-60, a quarter 80-120"
            + (f", scaled to a longest of {args.longest_reply}" if args.longest_reply != 120 else ""),
            "lr": LR,
            "max_grad_norm": ours.max_grad_norm,
            "gradient_checkpointing": checkpointing,
            "micro_batch_size_per_gpu": ours.micro_batch_size_per_gpu,
            "selfsft_micro_batch_tokens": args.micro_batch_tokens,
            "selfsft_bucket_max_padding": ours.bucket_max_padding,
            "seed": args.seed,
            "threads": args.threads,
            "quick": args.quick,
        },
        "machine": machine_info(args.threads),
        "machine_load": {"before": load_before, "after": load_after},
        "matmul_gflops": gflops,
        "matmul_gflops_before_after": [gflops_before, gflops_after],
        "scenarios": scenarios,
        "peak_rss_mib": peak_rss,
        "notes": notes,
    }
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = "training_speed" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    for shape, sc in scenarios.items():
        log(f"{shape}: ours {sc['ours']['tokens_per_s']:.1f} tokens/s (padding {sc['ours']['padding']:.1%}, MFU "
            f"{sc['ours']['mfu_6n']:.1%}), SFT {sc['sft']['tokens_per_s']:.1f} tokens/s (padding "
            f"{sc['sft']['padding']:.1%}, MFU {sc['sft']['mfu_6n']:.1%}): speed-up {sc['speedup']:.2f}x")
    log(f"peak RSS {peak_rss:.0f} MiB; wrote {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
