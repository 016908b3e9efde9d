"""Does ``torch.compile`` of the decode step pay? Its compile time against the time it saves per step.

The embedded model's one-token decode step (the decode loop's: grouped-head attention, reserved KV cache) at a
fixed number of live rows, eager and compiled (``torch.compile(dynamic=True)``, so the growing cache does not
recompile every step). Reports seconds per step of each, the compile time (the first compiled calls), and the
decoding time after which compiling has paid for itself.

    .venv/bin/python benchmarks/decode_compile.py                  # 64 rows, 32 steps; a few minutes

Writes ``decode_compile.json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

from agilerl_selfsft.generation.attention import grouped_decode_attention  # noqa: E402
from agilerl_selfsft.generation.kv_cache import reserve  # noqa: E402
from agilerl_selfsft.models import load_model  # noqa: E402


def decode(model: Any, forward: Any, rows: int, prompt: int, steps: int) -> float:
    """Seconds for ``steps`` greedy decode steps of ``rows`` rows after a prefill of ``prompt`` tokens."""
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (rows, prompt))
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        reserve(cache, steps)
        mask, position = torch.ones(rows, prompt, dtype=torch.long), torch.full((rows, 1), prompt - 1)
        token = out.logits[:, -1].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            mask, position = torch.cat([mask, mask.new_ones(rows, 1)], 1), position + 1
            token = forward(token[:, None], mask, position, cache).argmax(-1)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=40)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    model.eval()

    def step(input_ids: Any, attention_mask: Any, position_ids: Any, past_key_values: Any) -> Any:
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     past_key_values=past_key_values, use_cache=True).logits[:, -1]

    load_before = machine_load()
    with grouped_decode_attention(model):
        decode(model, step, args.rows, args.prompt, 2)  # warm-up
        eager = min(decode(model, step, args.rows, args.prompt, args.steps) for _ in range(2)) / args.steps
        compiled_step = torch.compile(step, dynamic=True)
        start = time.perf_counter()
        decode(model, compiled_step, args.rows, args.prompt, 2)  # compiles (prefill runs eager)
        first = time.perf_counter() - start
        compiled = min(decode(model, compiled_step, args.rows, args.prompt, args.steps) for _ in range(2)) / args.steps
    saved = eager - compiled
    result = {
        "benchmark": "decode_compile", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(), "rows": args.rows, "prompt": args.prompt, "steps": args.steps,
        "eager_s_per_step": round(eager, 4), "compiled_s_per_step": round(compiled, 4),
        "speedup": round(eager / compiled, 3), "compile_s": round(first - 2 * compiled, 1),
        "pays_after_decode_s": round((first - 2 * compiled) / saved * eager, 0) if saved > 0 else None,
        "machine": machine_info(args.threads), "machine_load": {"before": load_before, "after": machine_load()},
    }
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_compile.json").write_text(json.dumps(result, indent=2) + "\n")
    pays = result["pays_after_decode_s"]
    (out / "decode_compile.md").write_text("\n".join([
        "# torch.compile of the decode step",
        "",
        f"Embedded model, fp32, {args.rows} live rows after a {args.prompt}-token prefill, {args.steps} steps.",
        "",
        "| | s / step | |",
        "|---|---:|---|",
        f"| eager | {eager:.3f} | |",
        f"| compiled (`dynamic=True`) | {compiled:.3f} | {result['speedup']:.2f}× |",
        "",
        f"Compiling took **{result['compile_s']:.0f} s**; at {saved * 1000:.0f} ms saved per step it pays for itself "
        + (f"after **{pays:.0f} s** of eager decoding." if pays else "never (compiled steps were not faster)."),
        "",
        *environment_markdown(result),
    ]) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "machine_load")}, indent=2))


if __name__ == "__main__":
    main()
