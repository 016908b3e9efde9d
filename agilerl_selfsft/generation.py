"""Sampling K completions per prompt on the Hugging Face path: a batched decode loop over the model's KV cache.

``generate`` in transformers treats every row alike: each of the K copies of a prompt is prefilled separately,
and finished rows keep computing padding until the longest row ends. Self-training calls it with many rows
that share most of their prompt tokens (the K copies of one prompt; the chat template's system turn shared
by all prompts) and whose completions end at very different lengths. So this loop, step by step:

1. prefills the prompt tokens common to every prompt of the chunk once (batch 1), then copies that cache to
   every prompt (``Cache.batch_repeat_interleave``);
2. prefills each prompt's remaining tokens once (left-padded between the shared prefix and the suffix, with
   the attention mask and position ids saying so), computing logits for the last position only;
3. copies each prompt's cache K times, and decodes one token per step for all live rows;
4. drops every row that has emitted a stop token from the batch and the cache (``Cache.batch_select_indices``),
   so the remaining steps compute only live rows.

Sampling uses transformers' own logits warpers (temperature, top-k, top-p) and ``torch.multinomial``, so it
follows ``torch.manual_seed``; greedy takes the arg-max. Rows are returned in prompt order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class Generations:
    """What one sampling call produced.

    :param texts: ``texts[i][k]``, the k-th completion of prompt i (special tokens stripped)
    :param finished: ``finished[i][k]``, whether it ended with a stop (end-of-turn) token
    :param token_ids: ``token_ids[i][k]``, its token ids, up to and including the stop token
    :param num_tokens: tokens generated in all (up to and including each row's stop token)
    :param seconds: wall time of the call
    :param batch_rows: rows (prompts × K) decoded together, one entry per batch
    :param computed_rows: row-steps of decoding actually computed (live rows summed over steps)
    """

    texts: list[list[str]] = field(default_factory=list)
    finished: list[list[bool]] = field(default_factory=list)
    token_ids: list[list[list[int]]] = field(default_factory=list)
    num_tokens: int = 0
    seconds: float = 0.0
    batch_rows: list[int] = field(default_factory=list)
    computed_rows: int = 0


@dataclass
class Sampling:
    """How to pick each next token.

    :param max_new_tokens: most tokens per completion
    :param stop_token_ids: a row ends after emitting one of these
    :param temperature: softmax temperature; 0 or ``greedy`` takes the arg-max, defaults to 1.0
    :param top_p: nucleus filter, 1.0 = off, defaults to 1.0
    :param top_k: keep the k most likely tokens, 0 = off, defaults to 0
    :param greedy: arg-max decoding, defaults to False
    """

    max_new_tokens: int
    stop_token_ids: list[int]
    temperature: float = 1.0
    top_p: float | None = 1.0
    top_k: int | None = 0
    greedy: bool = False

    def warpers(self) -> LogitsProcessorList:
        """transformers' warpers for these settings (empty for greedy decoding)."""
        warpers = LogitsProcessorList()
        if self.is_greedy:
            return warpers
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature <= 0


def sample(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    num_generations: int,
    sampling: Sampling,
    max_batch_rows: int = 128,
    share_prompts: bool = True,
    drop_finished: bool = True,
) -> Generations:
    """Sample ``num_generations`` completions for each rendered prompt, ``max_batch_rows`` rows per batch.

    Prompts are grouped by token length into batches of ``max_batch_rows // K`` prompts (at least one).

    :param model: a causal LM (a PEFT model with the wanted adapter active is fine), in eval mode
    :param tokenizer: its tokenizer
    :param prompt_texts: prompts already rendered with the chat template
    :param num_generations: K, completions per prompt
    :param sampling: the decoding settings
    :param max_batch_rows: most rows (prompts × K) decoded together, defaults to 128
    :param share_prompts: prefill shared prompt tokens once (steps 1–3 above); False prefills every row on its
        own, like ``generate`` (for measuring what sharing buys), defaults to True
    :param drop_finished: drop finished rows from the batch (step 4); False decodes them on to the end,
        like ``generate``, defaults to True
    :return: texts, finish flags and token ids in the order of ``prompt_texts``, plus counts and timing
    """
    start = time.perf_counter()
    k = num_generations
    encoded = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("cannot sample for an empty prompt: every prompt needs at least one token")
    order = sorted(range(len(prompt_texts)), key=lambda i: len(encoded[i]))
    per_batch = max(1, max_batch_rows // k)
    out = Generations(
        texts=[[] for _ in prompt_texts], finished=[[] for _ in prompt_texts], token_ids=[[] for _ in prompt_texts]
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for begin in range(0, len(order), per_batch):
        chunk = order[begin : begin + per_batch]
        prompts = [encoded[i] for i in chunk]
        if share_prompts:
            rows, computed = _decode(model, prompts, k, sampling, pad_id, drop_finished)
        else:  # every row its own prompt
            rows, computed = _decode(model, [p for p in prompts for _ in range(k)], 1, sampling, pad_id, drop_finished, 0)
        out.batch_rows.append(len(chunk) * k)
        out.computed_rows += computed
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        for r, (ids, text) in enumerate(zip(rows, texts, strict=True)):
            i = chunk[r // k]
            out.texts[i].append(text.strip())
            out.token_ids[i].append(ids)
            out.finished[i].append(bool(ids) and ids[-1] in sampling.stop_token_ids)
            out.num_tokens += len(ids)
    out.seconds = time.perf_counter() - start
    return out


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens shared by the start of every prompt, leaving each prompt at least one token of its own."""
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


@torch.inference_mode()
def _decode(
    model: torch.nn.Module,
    prompts: list[list[int]],
    k: int,
    sampling: Sampling,
    pad_id: int,
    drop_finished: bool = True,
    shared: int | None = None,
) -> tuple[list[list[int]], int]:
    """One batch: every prompt's K completions (token ids, each ending at its stop token) and the row-steps computed.

    ``shared``: prompt tokens to prefill once for all prompts (default: all they have in common).
    """
    device = next(model.parameters()).device
    n = len(prompts)
    if shared is None:
        shared = _common_prefix_length(prompts) if n > 1 else len(prompts[0]) - 1

    # 1. the shared prefix, once
    cache = None
    if shared:
        cache = model(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True).past_key_values
        cache.batch_repeat_interleave(n)

    # 2. each prompt's own tokens, once: [prefix][left padding][suffix]
    suffixes = [p[shared:] for p in prompts]
    width = max(len(s) for s in suffixes)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, s in enumerate(suffixes):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, shared + width - len(s) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    prefill = model(
        input_ids=ids, attention_mask=mask, position_ids=positions[:, shared:], past_key_values=cache,
        use_cache=True, logits_to_keep=1,
    )
    cache = prefill.past_key_values

    # 3. K rows per prompt
    cache.batch_repeat_interleave(k)
    logits = prefill.logits[:, -1].repeat_interleave(k, dim=0)
    mask = mask.repeat_interleave(k, dim=0)
    position = positions[:, -1].repeat_interleave(k, dim=0)
    live = torch.arange(n * k, device=device)  # which output row each batch row is
    tokens = torch.full((n * k, sampling.max_new_tokens), -1, dtype=torch.long, device=device)
    stops = torch.tensor(sampling.stop_token_ids, device=device)
    warpers = sampling.warpers()
    computed = 0
    done = torch.zeros(n * k, dtype=torch.bool, device=device)
    for step in range(sampling.max_new_tokens):
        computed += len(live)
        if sampling.is_greedy:
            chosen = logits.argmax(dim=-1)
        else:
            scores = warpers(None, logits.float())
            chosen = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
        tokens[live, step] = chosen
        ended = torch.isin(chosen, stops)
        if not drop_finished:  # finished rows decode on; what they emit after their stop is cut below
            ended = done = ended | done
        n_ended = int(ended.sum())  # one host sync per step
        if step == sampling.max_new_tokens - 1 or n_ended == len(live):
            break
        if drop_finished and n_ended:  # 4. finished rows leave the batch
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, chosen, mask, position = live[keep], chosen[keep], mask[keep], position[keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        position = position + 1
        logits = model(
            input_ids=chosen[:, None], attention_mask=mask, position_ids=position[:, None], past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]

    rows = []
    for row in tokens.tolist():
        row = [t for t in row if t >= 0]
        end = next((j for j, t in enumerate(row) if t in sampling.stop_token_ids), None)
        rows.append(row if end is None else row[: end + 1])
    return rows, computed
