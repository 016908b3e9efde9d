"""Our GGUF export read by llama.cpp (what Ollama runs): same tokens, same greedy continuations as transformers.

The tests check the exported file with transformers' own GGUF reader. This script checks it with the real
consumer, llama.cpp, which is not on PyPI as a wheel and so is not part of the test suite: build its
``llama-simple`` and ``llama-tokenize`` once (from llama.cpp, or the copy vendored in the
``llama-cpp-python`` sdist)::

    cmake -S llama.cpp -B /tmp/llbuild -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF
    cmake --build /tmp/llbuild --target llama-simple llama-tokenize -j 2

then run from the repository root::

    .venv/bin/python benchmarks/gguf_llamacpp.py --llama-bin /tmp/llbuild/bin

What it does: builds a SelfSFT checkpoint of the embedded SmolLM2-135M-Instruct whose actor adapter is not
the identity (LoRA B drawn at ``--lora-scale``, so a file that dropped the adapter would answer like the base
model), exports it with ``agilerl-selfsft export --format gguf`` at each ``--outtypes``, and compares, on
``--prompts`` chat prompts rendered by the model's template, llama.cpp against the merged model in
transformers (fp32): the prompt's token ids (``llama-tokenize``) and the greedy continuation of
``--max-new-tokens`` tokens (``llama-simple``, which stops at an end-of-generation token). Writes
``gguf_llamacpp.json`` and ``.md`` to ``--output-dir``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for ``machine`` when run as a script

import agilerl_selfsft  # noqa: F401, I001  (before anything from agilerl)
from agilerl_selfsft import SelfSFT, export_checkpoint, load_model
from agilerl_selfsft.data.tasks import CAPITALS_DIR, load_tasks
from agilerl_selfsft.export.formats import merged_model
from agilerl_selfsft.training.checkpoints import save_iteration

import argparse
import json
import subprocess
import tempfile
from datetime import datetime, timezone

import torch
from peft import LoraConfig

from machine import command_line, environment_markdown, machine_info, machine_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-simple and llama-tokenize")
    parser.add_argument("--outtypes", nargs="+", default=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument("--prompts", type=int, default=20, help="held-out capitals questions")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lora-scale", type=float, default=0.02, help="std of the actor's LoRA B weights")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/gguf_llamacpp"))
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = machine_load()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp, args.lora_scale)
        model, tokenizer = merged_model(checkpoint)
        base, _ = load_model("smollm2-135m-instruct", dtype=torch.float32)
        questions = [t.messages for t in load_tasks(CAPITALS_DIR / "eval.jsonl")[: args.prompts]]
        texts = [tokenizer.apply_chat_template(q, tokenize=False, add_generation_prompt=True) for q in questions]
        reference = [hf_greedy(model, tokenizer, t, args.max_new_tokens) for t in texts]
        base_out = [hf_greedy(base, tokenizer, t, args.max_new_tokens) for t in texts]
        rows = []
        for outtype in args.outtypes:
            path = export_checkpoint(checkpoint, tmp / f"model-{outtype}.gguf", "gguf", outtype=outtype)
            same_ids = same_text = 0
            first_difference = None
            for text, (ids, want) in zip(texts, reference, strict=True):
                got_ids = llama_tokenize(args.llama_bin, path, text, tmp)
                got = llama_greedy(args.llama_bin, path, text, args.max_new_tokens, tokenizer.decode(ids))
                same_ids += got_ids == ids
                same_text += got == want
                if got != want and first_difference is None:
                    first_difference = {"prompt": text, "transformers": want, "llama.cpp": got}
            rows.append({"outtype": outtype, "file_mib": round(path.stat().st_size / 2**20, 1),
                         "same_prompt_ids": same_ids, "same_greedy_text": same_text, "prompts": len(texts),
                         "first_difference": first_difference})
            print(rows[-1])
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(torch.get_num_threads()),
        "machine_load": {"before": load_before, "after": machine_load()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "adapter_changes_greedy_text": sum(a[1] != b[1] for a, b in zip(reference, base_out, strict=True)),
        "examples": [{"prompt": q[-1]["content"], "greedy": r[1]}
                     for q, r in zip(questions[:3], reference, strict=False)],
        "rows": rows,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "gguf_llamacpp.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.output_dir / "gguf_llamacpp.md").write_text(markdown(result))
    print(markdown(result))


def make_checkpoint(root: Path, scale: float) -> Path:
    """A real SelfSFT checkpoint of the embedded model whose actor adapter changes the model."""
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32)
    agent = SelfSFT(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
                    tokenizer=tokenizer, lora_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                                task_type="CAUSAL_LM"),
                    gradient_checkpointing=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in agent.actor.named_parameters():
            if "lora_B.actor" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return save_iteration(agent, root / "run", 1)


def hf_greedy(model, tokenizer, text: str, new_tokens: int) -> tuple[list[int], str]:  # noqa: ANN001
    """The prompt's ids and the greedy continuation's text, up to (not including) an end-of-turn token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new_tokens, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(ids):].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in stop), len(new))]
    return ids, tokenizer.decode(new, skip_special_tokens=False)


def llama_tokenize(bin_dir: Path, model: Path, text: str, tmp: Path) -> list[int]:
    prompt = tmp / "prompt.txt"
    prompt.write_text(text)
    command = [str(bin_dir / "llama-tokenize"), "-m", str(model), "-f", str(prompt), "--ids", "--log-disable"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_greedy(bin_dir: Path, model: Path, text: str, new_tokens: int, echo: str) -> str:
    """llama-simple's greedy continuation (its stdout echoes the prompt's pieces first)."""
    out = subprocess.run([str(bin_dir / "llama-simple"), "-m", str(model), "-n", str(new_tokens), text],
                         capture_output=True, text=True, check=True).stdout
    if not out.startswith(echo):
        raise RuntimeError(f"llama-simple did not echo the prompt as transformers decodes it: {out[:200]!r}")
    return out[len(echo):].removesuffix("\n")


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# GGUF export read by llama.cpp",
        "",
        f"A SelfSFT checkpoint of the embedded SmolLM2-135M-Instruct (actor LoRA r16, B ~ N(0, {s['lora_scale']}²); "
        f"it changes the greedy answer on {result['adapter_changes_greedy_text']} of {s['prompts']} prompts), "
        "exported with `agilerl-selfsft export --format gguf`. On held-out capitals questions rendered by the "
        "chat template: the prompt's ids from `llama-tokenize` vs the transformers tokenizer, and the greedy "
        f"continuation ({s['max_new_tokens']} tokens at most, to the end of the turn) from `llama-simple` vs "
        "the merged model in transformers (fp32).",
        "",
        "| outtype | file MiB | same prompt ids | same greedy text |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['outtype']} | {r['file_mib']} | {r['same_prompt_ids']}/{r['prompts']} "
                     f"| {r['same_greedy_text']}/{r['prompts']} |")
    diffs = [(r["outtype"], r["first_difference"]) for r in result["rows"] if r["first_difference"]]
    for outtype, d in diffs:
        lines += ["", f"First difference at {outtype}: transformers {d['transformers']!r}, "
                      f"llama.cpp {d['llama.cpp']!r}"]
    lines += ["", "Examples (transformers, greedy): "
              + "; ".join(f"{e['prompt']!r} → {e['greedy']!r}" for e in result["examples"]), ""]
    lines += environment_markdown(result)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
