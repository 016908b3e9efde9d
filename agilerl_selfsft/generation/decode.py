"""Sampling K completions per prompt on the Hugging Face path: a batched decode loop over the model's KV cache.

``generate`` in transformers treats every row alike: each of the K copies of a prompt is prefilled separately,
finished rows keep computing padding until the longest row ends, and a batch ends only when its last row does.
Self-training calls it with many rows that share most of their prompt tokens (the K copies of one prompt; the
chat template's system turn shared by all prompts) and whose completions end at very different lengths. So this
loop, step by step:

1. prefills the prompt tokens common to every prompt once (batch 1) and copies that cache to each group of
   prompts it admits (``Cache.batch_repeat_interleave``);
2. prefills each admitted prompt's remaining tokens once (left-padded between the shared prefix and the
   suffix, with the attention mask and position ids saying so), computing logits for the last position only.
   A layer with a sliding (or chunked) attention window counts cache columns, padding included, so on such a
   model (Mistral, Phi-3, Gemma-2/3, Qwen2 with ``use_sliding_window``: read from its config) the prefix is
   not shared once a row could outgrow the window: each prompt is then left-padded at its start, which leaves
   every row's window over its own tokens, as ``generate`` has it;
3. copies each prompt's cache K times, and decodes one token per step for all live rows;
4. drops every row that has emitted a stop token from the batch and the cache, so the remaining steps compute
   only live rows (the last live rows move into the ended rows' places; ``Cache.batch_select_indices`` on a
   cache without reserved room);
5. refills the freed rows with waiting prompts (continuous batching): their caches are left-padded to the
   running cache's length (or the running cache to theirs) and joined along the batch, so up to
   ``max_batch_rows`` rows stay live until the prompts run out. Only caches of plain growing layers are joined
   (a sliding-window layer keeps a window, not the sequence): on other models a batch runs to its end.

Greedy decoding gives ``generate``'s tokens, token for token, on every architecture family the differential
tests build (``tests/generation/test_decode_architectures.py``).

Each decode step attends with grouped query heads folded onto their KV heads
(:mod:`~agilerl_selfsft.generation.attention`), so the cache is not copied per query head; the cache has room
reserved to grow into (:mod:`~agilerl_selfsft.generation.kv_cache`), so a step writes its column in place
instead of copying the cache; and a sampled token
is drawn by inverting the cumulative distribution with one uniform per row (:func:`draw`).

With a PEFT model, every LoRA adapter is folded into a copy of its base weight for the call
(:mod:`~agilerl_selfsft.generation.folding`), so each step runs one matmul per linear layer instead of three;
the model itself, and a base shared by a population, are never modified.

Sampling uses transformers' own logits warpers (temperature, top-k, top-p) and ``torch.multinomial``, so it
follows ``torch.manual_seed``; greedy takes the arg-max. With ``Sampling.greedy_last`` the last of each prompt's K
rows takes the arg-max and the others are drawn, so an evaluation decodes its greedy answers in the batch of its
samples (one prefill, one step per token for both). Rows are returned in prompt order.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from agilerl_selfsft.generation.attention import grouped_decode_attention
from agilerl_selfsft.generation.folding import merged_lora, unwrapped
from agilerl_selfsft.generation.kv_cache import (
    RESERVE, ReservedLayer, join_layers, joinable, left_pad, reserve, tail_moves,
)
from agilerl_selfsft.samples import Generations


@dataclass
class Sampling:
    """How to pick each next token.

    :param max_new_tokens: most tokens per completion
    :param stop_token_ids: a row ends after emitting one of these
    :param temperature: softmax temperature; 0 or ``greedy`` takes the arg-max, defaults to 1.0
    :param top_p: nucleus filter, 1.0 = off, defaults to 1.0
    :param top_k: keep the k most likely tokens, 0 = off, defaults to 0
    :param greedy: arg-max decoding, defaults to False
    :param greedy_last: the last of each prompt's K rows takes the arg-max while the others are drawn (an
        evaluation's greedy answer decoded in the same batch as its samples), defaults to False
    """

    max_new_tokens: int
    stop_token_ids: list[int]
    temperature: float = 1.0
    top_p: float | None = 1.0
    top_k: int | None = 0
    greedy: bool = False
    greedy_last: bool = False

    def __post_init__(self) -> None:
        if self.greedy and self.greedy_last:
            raise ValueError("greedy decodes every row greedily and greedy_last only each prompt's last: pass one")

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

    def choose(self, logits: torch.Tensor, warpers: LogitsProcessorList,
               greedy_rows: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row: the arg-max, or a draw from the warped softmax (the arg-max where ``greedy_rows``)."""
        if self.is_greedy:
            return logits.argmax(dim=-1)
        drawn = draw(torch.softmax(warpers(None, logits.float()), dim=-1))
        return drawn if greedy_rows is None else torch.where(greedy_rows, logits.argmax(dim=-1), drawn)


def draw(probs: torch.Tensor, block: int = 256) -> torch.Tensor:
    """One index per row of ``probs`` (``(rows, n)``, non-negative), drawn with probability proportional to its entry.

    ``torch.multinomial`` draws an exponential variate for every entry (its CPU kernel spent 13 % of a sampling
    call on a 49k vocabulary); this inverts the cumulative distribution with one uniform per row instead. The
    running sums are taken in fp64, over blocks of ``block`` entries and then within the chosen block, so
    rounding shifts no more than ~1e-7 of a block's mass, and an entry of zero probability is never drawn. It follows
    ``torch.manual_seed``.
    """
    rows, n = probs.shape
    blocks = (F.pad(probs, (0, -n % block)) if n % block else probs).view(rows, -1, block)
    mass = blocks.sum(-1).double()  # (rows, blocks); each block's fp32 sum is exact to ~1e-7 of its mass
    upto = mass.cumsum(-1)
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * upto[:, -1:]
    rows_with_mass = torch.arange(mass.shape[1], device=probs.device) * (mass > 0)  # rounding may reach the end
    b = torch.minimum(torch.searchsorted(upto, u, right=True), rows_with_mass.amax(-1, keepdim=True))
    inside = blocks[torch.arange(rows, device=probs.device), b.squeeze(1)]  # (rows, block)
    before = F.pad(upto, (1, 0)).gather(1, b)  # the mass of the blocks before b, exactly as the search saw it
    last = (torch.arange(block, device=probs.device) * (inside > 0)).amax(-1, keepdim=True)
    j = torch.minimum(torch.searchsorted(inside.double().cumsum(-1), u - before, right=True), last)
    return (b * block + j).squeeze(1)


def sample(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    num_generations: int,
    sampling: Sampling,
    max_batch_rows: int = 128,
    share_prompts: bool = True,
    drop_finished: bool = True,
    refill: bool = True,
    merge_lora: bool = True,
    fold_heads: bool = True,
    reserve_cache: bool = True,
) -> Generations:
    """Sample ``num_generations`` completions for each rendered prompt, at most ``max_batch_rows`` rows at a time.

    Prompts are admitted shortest first, K rows each (one prompt at least, even when K > ``max_batch_rows``).

    :param model: a causal LM (a PEFT model with the wanted adapter active is fine), in eval mode
    :param tokenizer: its tokenizer
    :param prompt_texts: prompts already rendered with the chat template
    :param num_generations: K, completions per prompt (with ``sampling.greedy_last``, the last one greedy)
    :param sampling: the decoding settings
    :param max_batch_rows: most rows (prompts × K) decoded together, defaults to 128
    :param share_prompts: prefill shared prompt tokens once (steps 1–3 above); False prefills every row on its
        own, like ``generate`` (for measuring what sharing buys), defaults to True
    :param drop_finished: drop finished rows from the batch (step 4); False decodes them on to the end of
        their batch, like ``generate``, defaults to True
    :param refill: admit waiting prompts into freed rows (step 5); False starts the next batch only when the
        last row of the current one has finished, defaults to True
    :param merge_lora: fold LoRA adapters into a copy of the base weights for the call, defaults to True
    :param fold_heads: on decode steps, attend with grouped query heads folded onto their KV heads instead of
        copying the cache per query head (:mod:`~agilerl_selfsft.generation.attention`), defaults to True
    :param reserve_cache: keep the KV cache in buffers with room to grow, so a step writes its column in place
        instead of copying the cache (:mod:`~agilerl_selfsft.generation.kv_cache`), defaults to True
    :return: texts, finish flags and token ids in the order of ``prompt_texts``, plus counts and timing
    """
    start = time.perf_counter()
    encoded = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("cannot sample for an empty prompt: every prompt needs at least one token")
    order = sorted(range(len(prompt_texts)), key=lambda i: len(encoded[i]))
    prompts, k = [encoded[i] for i in order], num_generations
    if not share_prompts:  # every row its own prompt, nothing shared
        prompts, k = [p for p in prompts for _ in range(num_generations)], 1
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = Generations(
        texts=[[] for _ in prompt_texts], finished=[[] for _ in prompt_texts], token_ids=[[] for _ in prompt_texts]
    )
    with merged_lora(model, enabled=merge_lora) as forward, grouped_decode_attention(unwrapped(model), fold_heads):
        loop = _Loop(forward, next(model.parameters()).device, sampling, pad_id, k, max(max_batch_rows, k),
                     attention_window(model), reserve_cache, group=num_generations)
        rows = loop.run(prompts, share=share_prompts, drop_finished=drop_finished, refill=refill)
    out.batch_rows = [n * k for n in loop.admitted]
    out.peak_rows, out.computed_rows = loop.peak_rows, loop.computed_rows
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    for r, (ids, text) in enumerate(zip(rows, texts, strict=True)):
        i = order[r // num_generations]
        out.texts[i].append(text.strip())
        out.token_ids[i].append(ids)
        out.finished[i].append(bool(ids) and ids[-1] in sampling.stop_token_ids)
        out.num_tokens += len(ids)
    out.seconds = time.perf_counter() - start
    return out


def attention_window(model: torch.nn.Module) -> int | None:
    """The narrowest attention window of any layer of ``model`` (sliding or chunked attention, read from its
    config), or None when every layer attends to the whole sequence."""
    config = getattr(unwrapped(model), "config", None)
    if config is None:
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and not any("sliding" in t or "chunked" in t for t in layer_types):
        return None
    if layer_types is None and getattr(config, "use_sliding_window", True) is False:
        return None
    windows = [w for w in (getattr(config, "sliding_window", None), getattr(config, "attention_chunk_size", None)) if w]
    return min(windows) if windows else None


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens shared by the start of every prompt, leaving each prompt at least one token of its own."""
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


@dataclass
class _Rows:
    """The live rows of the decode batch: their cache, next-token logits, masks, positions and bookkeeping."""

    cache: object
    logits: torch.Tensor
    mask: torch.Tensor  # (rows, cache length): 1 where a cache column belongs to the row
    position: torch.Tensor  # position id of each row's last token
    live: torch.Tensor  # which output row each batch row is
    count: torch.Tensor  # tokens generated so far per row
    done: torch.Tensor  # rows that have ended (only kept in the batch when finished rows are not dropped)
    joined: bool = False  # rows were admitted into a running batch, so leading cache columns may be padding

    def drop(self, ended: torch.Tensor) -> torch.Tensor:
        """Drop the rows ``ended`` (a bool per row), and cut cache columns that no row left attends to; the old
        index of each row left, in its new order."""
        if all(isinstance(layer, ReservedLayer) for layer in self.cache.layers):
            keep, holes, movers = tail_moves(ended)  # copies as many rows as ended, not every row kept
            for layer in self.cache.layers:
                layer.move_rows(holes, movers, len(keep))
        else:
            keep = (~ended).nonzero().squeeze(1)
            self.cache.batch_select_indices(keep)
        for name in ("logits", "mask", "position", "live", "count", "done"):
            setattr(self, name, getattr(self, name)[keep])
        if not self.joined:  # no join padded the cache: nothing to cut, and no host sync spent finding out
            return keep
        first = int(self.mask.any(0).int().argmax())  # leading columns padded for rows that have left
        if first and joinable(self.cache):
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]
        return keep

    def join(self, other: _Rows) -> None:
        """Append ``other``'s rows, left-padding the shorter cache (masked out) to the longer one's length."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            join_layers(mine, theirs, length)  # one copy of each row set, into a buffer with room
        self.mask = torch.cat([left_pad(self.mask, length), left_pad(other.mask, length)])
        for name in ("logits", "position", "live", "count", "done"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        self.joined = True


class _Loop:
    """The decode loop of :func:`sample` for one call: admit prompts, sample, drop finished rows, step."""

    def __init__(self, forward: Callable[..., object], device: torch.device, sampling: Sampling, pad_id: int,
                 k: int, capacity: int, window: int | None = None, reserve: bool = True, group: int = 1) -> None:
        self.forward, self.device, self.sampling, self.pad_id = forward, device, sampling, pad_id
        self.reserve, self.group = reserve, group  # group: output rows per prompt (K, however many the loop shares)
        self.k, self.capacity, self.window = k, capacity, window
        self.admitted: list[int] = []  # prompts admitted by each prefill
        self.peak_rows = self.computed_rows = 0

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], share: bool, drop_finished: bool, refill: bool) -> list[list[int]]:
        """Every prompt's K completions (token ids, each ending at its stop token), in prompt order."""
        sampling, k = self.sampling, self.k
        prefix = None
        shared = 0
        if share:
            shared = _common_prefix_length(prompts) if len(prompts) > 1 else len(prompts[0]) - 1
            longest = len(prompts[-1]) + sampling.max_new_tokens
            if len(prompts) > 1 and self.window is not None and longest >= self.window:
                shared = 0  # padding between prefix and suffix would sit inside a row's window (see step 2)
        if shared:  # 1. the shared prefix, once
            ids = torch.tensor([prompts[0][:shared]], device=self.device)
            prefix = self.forward(input_ids=ids, use_cache=True).past_key_values
        tokens = torch.full((len(prompts) * k, sampling.max_new_tokens), -1, dtype=torch.long, device=self.device)
        stops = torch.tensor(sampling.stop_token_ids, device=self.device)
        warpers = sampling.warpers()
        # output row r is completion r % K of its prompt (shared or not); with greedy_last, completion K - 1 is greedy
        greedy_of = None
        if sampling.greedy_last and not sampling.is_greedy:
            greedy_of = torch.arange(len(tokens), device=self.device) % self.group == self.group - 1
        pending = deque(range(len(prompts)))
        rows: _Rows | None = None
        while pending or rows is not None:
            free = self.capacity - (0 if rows is None else len(rows.live))
            if pending and (rows is None or (refill and free >= max(k, self.capacity // 8))):
                take = [pending.popleft() for _ in range(min(len(pending), max(1, free // k)))]
                new = self._prefill([prompts[i] for i in take], take, prefix, shared)  # 2.-3.
                self.admitted.append(len(take))
                if rows is None:
                    rows = new
                    refill = refill and joinable(rows.cache)  # other cache types cannot be joined
                else:
                    rows.join(new)  # 5.
            self.peak_rows = max(self.peak_rows, len(rows.live))
            self.computed_rows += len(rows.live)
            chosen = sampling.choose(rows.logits, warpers, None if greedy_of is None else greedy_of[rows.live])
            tokens[rows.live, rows.count] = chosen
            rows.count += 1
            rows.done |= torch.isin(chosen, stops) | (rows.count >= sampling.max_new_tokens)
            # finished rows leave at once, or (drop_finished=False) decode on until the whole batch has ended
            ended = rows.done if drop_finished else rows.done.all().expand_as(rows.done)
            n_ended = int(ended.sum())  # one host sync per step
            if n_ended == len(rows.live):
                rows = None
                continue
            if n_ended:  # 4.
                chosen = chosen[rows.drop(ended)]
            rows.logits = self._step(rows, chosen)
        out = []
        for row in tokens.tolist():
            row = [t for t in row if t >= 0]
            end = next((j for j, t in enumerate(row) if t in sampling.stop_token_ids), None)
            out.append(row if end is None else row[: end + 1])
        return out

    def _prefill(self, prompts: list[list[int]], indices: list[int], prefix: object, shared: int) -> _Rows:
        """Admit prompts: prefill each one's own tokens once after the shared prefix, then copy it to K rows."""
        n, k = len(prompts), self.k
        cache = None
        if shared:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(n)
        # [prefix][left padding][suffix]
        suffixes = [p[shared:] for p in prompts]
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, s in enumerate(suffixes):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, shared + width - len(s) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.forward(
            input_ids=ids, attention_mask=mask, position_ids=positions[:, shared:], past_key_values=cache,
            use_cache=True, logits_to_keep=1,
        )
        if self.reserve and joinable(out.past_key_values):  # K rows and room in one copy: steps write in place
            reserve(out.past_key_values, min(self.sampling.max_new_tokens, RESERVE), repeat=k)
        else:
            out.past_key_values.batch_repeat_interleave(k)
        live = (torch.tensor(indices, device=self.device)[:, None] * k + torch.arange(k, device=self.device)).flatten()
        return _Rows(
            cache=out.past_key_values,
            logits=out.logits[:, -1].repeat_interleave(k, dim=0),
            mask=mask.repeat_interleave(k, dim=0),
            position=positions[:, -1].repeat_interleave(k, dim=0),
            live=live,
            count=torch.zeros(n * k, dtype=torch.long, device=self.device),
            done=torch.zeros(n * k, dtype=torch.bool, device=self.device),
        )

    def _step(self, rows: _Rows, chosen: torch.Tensor) -> torch.Tensor:
        """Feed each live row its newest token; the next-token logits of every row."""
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((len(rows.live), 1))], dim=1)
        rows.position = rows.position + 1
        return self.forward(
            input_ids=chosen[:, None], attention_mask=rows.mask, position_ids=rows.position[:, None],
            past_key_values=rows.cache, use_cache=True,
        ).logits[:, -1]
