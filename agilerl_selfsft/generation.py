"""Batched sampling of K completions per prompt with Hugging Face ``generate``.

All prompts of a chunk are left-padded into one batch and each is repeated K times, so one ``generate``
call serves ``prompts × K`` rows (AgileRL's GRPO HF path makes one call per prompt). Rows stop at the
chat template's end-of-turn token; a row that hits ``max_new_tokens`` first is reported as unfinished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase


@dataclass
class Generations:
    """What one sampling call produced.

    :param texts: ``texts[i][k]``, the k-th completion of prompt i (special tokens stripped)
    :param finished: ``finished[i][k]``, whether it ended with an end-of-turn token
    :param num_tokens: tokens generated in all (up to and including each row's stop token)
    :param seconds: wall time of the call
    """

    texts: list[list[str]] = field(default_factory=list)
    finished: list[list[bool]] = field(default_factory=list)
    num_tokens: int = 0
    seconds: float = 0.0


def hf_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    num_generations: int,
    generation_config: GenerationConfig,
    stop_token_ids: list[int],
    max_batch_rows: int = 64,
) -> Generations:
    """Sample ``num_generations`` completions for each rendered prompt, ``max_batch_rows`` rows per call.

    Prompts are grouped by token length before batching (less left padding), and results are returned in
    the order of ``prompt_texts``.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    k = num_generations
    encoded = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompt_texts)), key=lambda i: len(encoded[i]))
    per_call = max(1, max_batch_rows // k)
    result = Generations(texts=[[] for _ in prompt_texts], finished=[[] for _ in prompt_texts])
    stops = torch.tensor(stop_token_ids, device=device)
    for begin in range(0, len(order), per_call):
        chunk = order[begin : begin + per_call]
        batch = tokenizer.pad(
            {"input_ids": [encoded[i] for i in chunk]}, padding=True, padding_side="left", return_tensors="pt"
        )
        input_ids = batch["input_ids"].to(device).repeat_interleave(k, dim=0)
        attention_mask = batch["attention_mask"].to(device).repeat_interleave(k, dim=0)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config)
        new = out[:, input_ids.shape[1] :]
        is_stop = torch.isin(new, stops)
        has_stop = is_stop.any(dim=1)
        # length up to and including the first stop token, or the whole row
        lengths = torch.where(has_stop, is_stop.int().argmax(dim=1) + 1, torch.full_like(has_stop, new.shape[1], dtype=torch.long))
        texts = tokenizer.batch_decode(
            [row[:n] for row, n in zip(new.tolist(), lengths.tolist(), strict=True)], skip_special_tokens=True
        )
        for row, text in enumerate(texts):
            i = chunk[row // k]
            result.texts[i].append(text.strip())
            result.finished[i].append(bool(has_stop[row]))
        result.num_tokens += int(lengths.sum())
    result.seconds = time.perf_counter() - start
    return result
