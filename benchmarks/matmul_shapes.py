"""fp32 against bf16 matmul on this CPU at the shapes a policy runs, not only the square probe's.

    .venv/bin/python benchmarks/matmul_shapes.py          # about 30 s

``dtype: auto`` decides from a square 512³ matmul (:func:`agilerl_selfsft.precision.probe`). A decode step is a
skinny matmul (rows × hidden times hidden × intermediate, a few to a few hundred rows), a training micro-batch a
tall one (thousands of tokens). This times ``(M × K) @ (K × N)`` with the embedded model's MLP shape
(K = 576, N = 1536) for M from 1 to 4096 in both dtypes, and the square probe's shape, at ``--threads``.

Writes ``matmul_shapes.json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """GFLOP/s of ``(m × k) @ (k × n)`` in ``dtype``: a warm-up, then repeats for ``seconds``."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = machine_load()
    shapes = [(m, 576, 1536) for m in (1, 4, 16, 64, 256, 1024, 4096)] + [(512, 512, 512)]
    rows = []
    for m, k, n in shapes:
        fp32, bf16 = gflops(m, k, n, torch.float32), gflops(m, k, n, torch.bfloat16)
        rows.append({"m": m, "k": k, "n": n, "float32": round(fp32, 1), "bfloat16": round(bf16, 1),
                     "bf16_over_fp32": round(bf16 / fp32, 2)})
        print(f"[matmul_shapes] {m} x {k} x {n}: fp32 {fp32:.1f}, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.2f}x)",
              flush=True)
    result = {"benchmark": "matmul_shapes", "threads": args.threads, "shapes": rows,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
              "machine": machine_info(args.threads),
              "machine_load": {"before": load_before, "after": machine_load()}}
    lines = ["# fp32 and bf16 matmul at a policy's shapes", "",
             f"`(M × K) @ (K × N)` on {args.threads} thread(s); K × N = 576 × 1536 is the embedded model's MLP "
             "(a decode step has M = live rows, a training micro-batch M = tokens); 512³ is `dtype: auto`'s probe.", "",
             "| M × K × N | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |", "|---|---:|---:|---:|"]
    lines += [f"| {r['m']} × {r['k']} × {r['n']} | {r['float32']} | {r['bfloat16']} | {r['bf16_over_fp32']}× |"
              for r in rows]
    lines += ["", *environment_markdown(result)]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "matmul_shapes.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "matmul_shapes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
