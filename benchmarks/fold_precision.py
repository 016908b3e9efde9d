"""What folding a trained LoRA adapter into bf16 weights does to the policy, against fp32.

    make demo && .venv/bin/python benchmarks/fold_precision.py --adapter runs/demo/checkpoints/latest/actor

The HF decode loop (and the vLLM engine) samples from ``W + B·A`` folded into a copy of each base weight, in
the base weight's dtype (:mod:`agilerl_selfsft.generation.folding`); learning runs the adapter as LoRA layers
in fp32. In bf16, ``W + B·A`` is rounded to bf16: every element of the update smaller than half a bf16 step of
its weight is lost. This measures, for a base in fp32 and in bf16 with the same adapter:

- the share of the update's elements that folding loses, and the update's relative error (Frobenius norm);
- the next-token KL (on the held-out capitals prompts) of the folded policy from the unfolded one, beside the KL
  of the unfolded policy from the base model (how far the adapter moved the policy at all);
- greedy completions of both: how many are the same, and the ``contains`` reward of each.

Writes ``fold_precision.json`` and ``.md`` to ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids  # noqa: E402
from agilerl_selfsft.generation.decode import Sampling, sample  # noqa: E402
from agilerl_selfsft.generation.folding import folded_lora_weights  # noqa: E402
from agilerl_selfsft.models import load_model  # noqa: E402
from agilerl_selfsft.rewards import contains  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "agilerl_selfsft" / "data" / "builtin" / "capitals" / "eval.jsonl"


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean KL(p || q) of rows of log-probabilities."""
    return float((p.exp() * (p - q)).sum(-1).mean())


def update_error(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of the update's non-zero elements that folding rounded away, and its mean relative error."""
    params = dict(model.named_parameters())
    lost = total = 0
    errors = []
    for name, folded in weights.items():
        layer = model.get_submodule(name.removesuffix(".base_layer.weight"))
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        delta = (b @ a).float() * layer.scaling["default"]
        got = folded.float() - params[name].float()
        errors.append(float((got - delta).norm() / delta.norm()))
        lost += int(((got == 0) & (delta != 0)).sum())
        total += int((delta != 0).sum())
    return {"update_elements_lost": round(lost / total, 4), "update_relative_error": round(sum(errors) / len(errors), 4)}


@torch.inference_mode()
def measure(dtype: str, adapter: Path, rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    base, tokenizer = load_model(dtype=dtype, device="cpu")
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    weights = folded_lora_weights(model)
    texts = [render_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False))
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding: real positions
    unfolded = model(**batch).logits[:, -1].float().log_softmax(-1)
    with model.disable_adapter():
        folded = torch.func.functional_call(model, weights, args=(), kwargs=batch).logits[:, -1]
        folded = folded.float().log_softmax(-1)
        plain = model(**batch).logits[:, -1].float().log_softmax(-1)
    greedy = Sampling(max_new_tokens=max_new_tokens, stop_token_ids=turn_end_token_ids(tokenizer), greedy=True)
    completions = {name: [t[0] for t in sample(model, tokenizer, texts, 1, greedy, merge_lora=fold).texts]
                   for name, fold in (("folded", True), ("unfolded", False))}
    answers = [r["answer"] for r in rows]
    return {
        **update_error(model, weights),
        "kl_folded_from_unfolded": round(kl(unfolded, folded), 6),
        "kl_base_from_unfolded": round(kl(unfolded, plain), 6),
        "greedy_same": sum(a == b for a, b in zip(completions["folded"], completions["unfolded"], strict=True)),
        "greedy_reward": {name: sum(contains(texts, c, answers)) / len(rows) for name, c in completions.items()},
        "logprobs": {"unfolded": unfolded, "folded": folded},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["# LoRA folded into fp32 and bf16 weights", "",
             f"Adapter `{result['adapter']}`, {result['prompts']} held-out capitals prompts, greedy completions of "
             f"at most {result['max_new_tokens']} tokens.", "",
             "| base dtype | update elements lost | update's relative error | KL(unfolded ‖ folded) | "
             "KL(unfolded ‖ base model) | greedy completions the same | greedy reward folded / unfolded |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for dtype, r in result["dtypes"].items():
        lines.append(f"| {dtype} | {r['update_elements_lost']:.1%} | {r['update_relative_error']:.3f} | "
                     f"{r['kl_folded_from_unfolded']:.6f} | {r['kl_base_from_unfolded']:.4f} | "
                     f"{r['greedy_same']}/{result['prompts']} | {r['greedy_reward']['folded']:.3f} / "
                     f"{r['greedy_reward']['unfolded']:.3f} |")
    x = result["across"]
    lines += ["", f"Against the fp32 policy run unfolded: KL of bf16 unfolded {x['kl_bf16_unfolded']:.6f}, of bf16 "
              f"folded {x['kl_bf16_folded']:.6f}. KL is of the next-token distribution after each prompt.", "",
              *environment_markdown(result)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, default=ROOT / "runs" / "demo" / "checkpoints" / "latest" / "actor",
                        help="a trained LoRA adapter folder (default: make demo's latest)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = machine_load()
    rows = [json.loads(line) for line in EVAL.read_text().splitlines()]
    dtypes = {d: measure(d, args.adapter, rows, args.max_new_tokens) for d in ("float32", "bfloat16")}
    ref = dtypes["float32"]["logprobs"]["unfolded"]
    across = {f"kl_bf16_{k}": round(kl(ref, v), 6) for k, v in dtypes["bfloat16"]["logprobs"].items()}
    for r in dtypes.values():
        del r["logprobs"]
    result = {"benchmark": "fold_precision", "adapter": str(args.adapter), "prompts": len(rows),
              "max_new_tokens": args.max_new_tokens, "dtypes": dtypes, "across": across,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
              "machine": machine_info(args.threads),
              "machine_load": {"before": load_before, "after": machine_load()}}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "fold_precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "fold_precision.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
