"""One rank of the data-parallel test: ``accelerate launch ... tests/distributed_worker.py OUT [--from-launcher]``
(agilerl 2.10), or ``torchrun --nproc_per_node 2 tests/distributed_worker.py OUT`` (agilerl 2.58: no accelerator;
AgileRL starts the gloo process group from torchrun's environment when the agent is built).

Builds the tiny Llama of ``conftest.py`` (the real SmolLM2 tokenizer, random weights), a SelfSFT on an
``Accelerator`` with a DeepSpeed ZeRO-2 plugin (gloo on CPU, NCCL on GPUs), runs ``finetune_llm_selfsft``
for two iterations and writes what this rank ended with to ``OUT/rank_<r>.json``: digests of the actor
adapters before and after, the metrics, the training buffer, and a digest of the saved checkpoint's
adapters; then the same run again, stopped after one iteration and resumed from its checkpoint by fresh
agents. ``tests/test_distributed.py`` compares the ranks, and the resumed run with the uninterrupted one.
With ``--from-launcher`` the DeepSpeed settings come from the ``accelerate launch`` flags
(``make_accelerator()``) and only the first run is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import agilerl_selfsft  # noqa: F401,E402  (before agilerl: it patches agilerl's flags)
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs  # noqa: E402
from peft import LoraConfig  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from agilerl_selfsft import SelfSFT, SelfSFTGym, Task, finetune_llm_selfsft  # noqa: E402
from agilerl_selfsft.agilerl_adapter import AGILERL_258, unwrapped_actor, world_and_rank  # noqa: E402
from agilerl_selfsft.distributed import DataParallel, make_accelerator  # noqa: E402
from agilerl_selfsft.models import load_tokenizer  # noqa: E402

ZERO2 = {
    "zero_optimization": {"stage": 2},
    "train_micro_batch_size_per_gpu": "auto",  # AgileRL sets it from batch_size / processes
    "gradient_accumulation_steps": 1,
}


def even_length(prompts, completions, **kwargs):
    """1.0 for completions of even length: the random tiny model hits it about half the time."""
    return [float(len(c) % 2 == 0) for c in completions]


def tasks(words, start=0):
    return [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {"answer": w})
            for i, w in enumerate(words, start=start)]


def adapter_weights(agent) -> dict[str, torch.Tensor]:
    """The actor adapter's tensors, named as in a saved ``adapter_model.safetensors``."""
    model = unwrapped_actor(agent)
    return {name.replace(".actor.", "."): p.detach().cpu().clone()
            for name, p in model.named_parameters() if "lora_" in name and ".actor." in name}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].float().numpy().tobytes())
    return h.hexdigest()


def build(accelerator: Accelerator | None, tokenizer) -> tuple[SelfSFT, SelfSFTGym]:
    torch.manual_seed(0)  # the same base weights on every rank (DeepSpeed also broadcasts rank 0's)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )).to(torch.float32)
    agent = SelfSFT(
        pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model, tokenizer=tokenizer,
        lora_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", lora_dropout=0.0),
        batch_size=2 * int(os.environ["WORLD_SIZE"]),  # the global batch; AgileRL gives each process 2
        lr=1e-2, max_new_tokens=8, gradient_checkpointing=False, num_generations=2, accelerator=accelerator,
    )
    # the tiny random model never ends a turn on its own: keep its truncated samples; replay carries state
    # from one iteration to the next (and through a resume)
    env = SelfSFTGym(tasks(["one", "two", "three", "four", "five"]), tasks(["six", "seven", "eight"], start=5),
                     tokenizer, even_length, data_batch_size_per_gpu=2, keep_truncated=True, replay_capacity=8,
                     replay_ratio=1.0, accelerator=accelerator)
    return agent, env


def run(agent: SelfSFT, env: SelfSFTGym, run_dir: Path, iterations: int, resume: bool = False) -> list[dict]:
    _, history = finetune_llm_selfsft(
        [agent], env, iterations=iterations, prompts_per_iteration=5, sft_epochs=1, eval_samples=2,
        checkpoint_path=run_dir, verbose=False, resume=resume, accelerator=agent.accelerator,
    )
    return history


def main(out: Path, from_launcher: bool = False) -> None:
    torch.set_num_threads(1)
    if AGILERL_258:  # torchrun: the agent starts the process group
        accelerator = None
    elif from_launcher:  # the DeepSpeed settings of `accelerate launch --use_deepspeed --zero_stage 2 ...`
        accelerator = make_accelerator()
    else:  # our own ZeRO-2 config; on CPU the processes need gloo (make_accelerator adds it too)
        handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
        accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ZERO2), kwargs_handlers=handlers)
    tokenizer = load_tokenizer("smollm2-135m-instruct")

    # 1. two iterations in one go
    agent, env = build(accelerator, tokenizer)
    initial = digest(adapter_weights(agent))
    world, rank = world_and_rank(accelerator)
    start = time.perf_counter()
    history = run(agent, env, out / "run", iterations=2)
    seconds = time.perf_counter() - start
    saved = load_file(str(out / "run" / "checkpoints" / "latest" / "actor" / "adapter_model.safetensors"))
    result = {
        "rank": rank,
        "world": world,
        "actor_type": type(agent.actor).__name__,
        "initial_digest": initial,
        "final_digest": digest(adapter_weights(agent)),
        "checkpoint_digest": digest(saved),
        "history": history,
        "buffer": [[s.prompt_id, s.completion] for s in env.buffer],
        "seconds": seconds,
    }
    if accelerator is not None:
        result.update(distributed_type=str(accelerator.distributed_type), zero_stage=agent.zero_stage,
                      gradient_accumulation_steps=accelerator.deepspeed_plugin.deepspeed_config["gradient_accumulation_steps"])
    else:
        result.update(backend=torch.distributed.get_backend(), runtime=type(agent.shard_runtime).__name__)

    if from_launcher:
        (out / f"rank_{rank}.json").write_text(json.dumps(result, indent=2))
        DataParallel(accelerator).barrier()
        return

    # 2. the same run stopped after one iteration, then resumed by fresh agents from its checkpoint. An
    # Accelerator sends every backward pass to the first DeepSpeed engine it prepared, so each agent is
    # cleaned up (which releases its engine) before the next is built.
    agent.clean_up()
    agent, env = build(accelerator, tokenizer)
    run(agent, env, out / "resumed", iterations=1)
    agent.clean_up()
    agent, env = build(accelerator, tokenizer)
    result["resumed_history"] = run(agent, env, out / "resumed", iterations=2, resume=True)
    result["resumed_digest"] = digest(adapter_weights(agent))

    (out / f"rank_{rank}.json").write_text(json.dumps(result, indent=2))
    DataParallel(accelerator).barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), from_launcher="--from-launcher" in sys.argv[2:])
