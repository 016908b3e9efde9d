"""The decode loop against transformers' ``generate`` on every architecture family it claims.

Random tiny models (seeded, with large weights so every prompt gets its own, varied completion) of Llama,
Qwen2 (plain and with sliding windows), Mistral (a window narrower than the prompts, and one wider), Gemma-2,
Gemma-3, Phi-3 and GPT-2, two of them with a LoRA adapter folded in. Each is decoded on prompts of different
lengths, with and without a shared prefix, K = 1 and 3, with stop tokens that end rows at different steps and
a batch small enough that freed rows are refilled. Greedy decoding must give ``generate``'s tokens, token for
token, for every row; sampling at a fixed seed must follow the model's own next-token distribution (a
chi-square test on the first two tokens of every prompt, which also rejects the distribution of a different
prompt).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.generation.decode import Sampling, attention_window, sample

from architectures import CASES, FAMILIES, build  # noqa: I001  (tests/: the tiny model of each family)

PLAIN = ["Paris is", "The quick brown fox jumps over the lazy", "1 2 3", "Once upon a time, in a land far away,"]
CHATS = ["Hi", "What is the capital of France?", "Name a colour, please, any colour you like at all.", "2 + 2?"]
MAX_NEW = 10


@pytest.fixture(scope="module")
def prompt_sets(tokenizer):
    """Prompts of different lengths without a shared prefix, and chat-rendered ones that share the template's
    system turn."""
    return {"plain": PLAIN, "shared": [render_prompt(tokenizer, [{"role": "user", "content": c}]) for c in CHATS]}


def hf_greedy(model, tokenizer, text, stops):
    """``generate``'s greedy completion of one unpadded prompt, up to and including its first stop token."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW,
                         eos_token_id=stops or None, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    end = next((j for j, t in enumerate(out) if t in stops), None)
    return out if end is None else out[: end + 1]


def staggered_stops(model, tokenizer, texts):
    """Stop tokens that end the j-th shortest prompt at step j + 1 or soon after, each after the one before (a
    token of its own greedy completion that no other prompt's contains), and leave the longest to run to ``MAX_NEW``. The loop admits
    prompts shortest first, so the first batch frees rows early and waiting prompts are joined in."""
    by_length = sorted(texts, key=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    free = [hf_greedy(model, tokenizer, t, []) for t in by_length]
    stops, at = [], -1
    for j, ids in enumerate(free[:-1]):
        others = {t for i, o in enumerate(free) if i != j for t in o}
        at = next(n for n in range(at + 1, MAX_NEW) if ids[n] not in others and ids.index(ids[n]) == n)
        stops.append(ids[at])
    return stops


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("prompts", ["plain", "shared"])
@pytest.mark.parametrize("case", CASES)
def test_greedy_equals_generate_token_for_token(case, prompts, k, tokenizer, prompt_sets):
    model = build(case, len(tokenizer))
    texts = prompt_sets[prompts]
    assert attention_window(model) == FAMILIES[case.split("+")[0]][3]
    stops = staggered_stops(model, tokenizer, texts)
    sampling = Sampling(max_new_tokens=MAX_NEW, stop_token_ids=stops, greedy=True)
    gens = sample(model, tokenizer, texts, k, sampling, max_batch_rows=2 * k)
    for i, text in enumerate(texts):
        assert gens.token_ids[i] == [hf_greedy(model, tokenizer, text, stops)] * k, f"prompt {i}"
    lengths = [len(rows[0]) for rows in gens.token_ids]
    assert len(set(lengths)) >= 3 and MAX_NEW in lengths  # rows ended at different steps, by a stop or the cap
    assert gens.computed_rows == gens.num_tokens  # finished rows left the batch at once
    if attention_window(model) is None:  # plain caches: rows freed by the first stop were refilled at once
        assert len(gens.batch_rows) > 2 and gens.batch_rows[1] == k


def fits(counts, probs):
    """The chi-square p-value of ``counts`` under the probabilities ``probs`` (renormalised)."""
    total = sum(probs)
    return chisquare(counts, [sum(counts) * p / total for p in probs]).pvalue


def next_token_probs(model, ids, temperature, top_k):
    """The model's next-token distribution after ``ids`` under temperature and top-k, as {token: p}."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float() / temperature
    top = logits.topk(top_k)
    return dict(zip(top.indices.tolist(), torch.softmax(top.values, -1).tolist(), strict=True))


@pytest.mark.parametrize("case", ["llama", "mistral_sliding", "gemma2", "gpt2", "llama+lora"])
def test_sampling_follows_the_model_distribution(case, tokenizer):
    # 3 prompts of different lengths in one batch (left padding, K rows per prefill), 400 samples each, 2 tokens:
    # the counts of every (first, second) token pair must fit the model's own probabilities (chi-square,
    # p > 0.001), and must not fit those of another prompt (which they would if rows were mixed up)
    model = build(case, len(tokenizer))
    texts, n, temperature, top_k = PLAIN[:3], 400, 3.0, 3
    sampling = Sampling(max_new_tokens=2, stop_token_ids=[-1], temperature=temperature, top_k=top_k)
    torch.manual_seed(0)
    gens = sample(model, tokenizer, texts, n, sampling, max_batch_rows=3 * n)
    expected = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        first = next_token_probs(model, ids, temperature, top_k)
        expected.append({(a, b): pa * pb for a, pa in first.items()
                         for b, pb in next_token_probs(model, ids + [a], temperature, top_k).items()})
    for i, rows in enumerate(gens.token_ids):
        counts = [sum(tuple(r) == pair for r in rows) for pair in expected[i]]
        assert sum(counts) == n  # every sample is one of the model's top-k pairs
        assert fits(counts, list(expected[i].values())) > 1e-3, f"prompt {i}"
        other = expected[(i + 1) % len(texts)]
        wrong = [sum(tuple(r) == pair for r in rows) for pair in other]
        if sum(wrong) == n:  # the other prompt has the same support: its probabilities must not fit
            assert fits(wrong, list(other.values())) < 1e-3
