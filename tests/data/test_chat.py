"""Chat rendering and assistant-only loss masks, with the real SmolLM2 tokenizer (ChatML template)."""

from __future__ import annotations

import copy

import pytest
import torch

from agilerl_selfsft.data.chat import collate, render_prompt, tokenize_conversation, turn_end_token_ids
from agilerl_selfsft.errors import SelfSFTError

from conftest import MULTI, spans  # MULTI: a system/user/assistant/tool/user/assistant chat

SINGLE = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_single_turn_masks_exactly_the_assistant_tokens(tokenizer):
    ids, mask, prompt_length = tokenize_conversation(tokenizer, SINGLE)
    assert len(ids) == len(mask)
    full = tokenizer(tokenizer.apply_chat_template(SINGLE, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids == full  # the whole conversation, as the template renders it
    learned = decode(tokenizer, [t for t, m in zip(ids, mask) if m])
    assert learned in ("Paris.<|im_end|>", "Paris.<|im_end|>\n")
    # the mask is one run at the end, and starts right after the prompt
    assert [m for m, _ in spans(ids, mask)] == [0, 1]
    assert mask.index(1) == prompt_length
    prompt = decode(tokenizer, ids[:prompt_length])
    assert prompt == render_prompt(tokenizer, SINGLE[:1])
    assert prompt.endswith("<|im_start|>assistant\n") and "What is the capital of France?" in prompt


def test_multi_turn_learns_every_assistant_turn_and_nothing_else(tokenizer):
    rendered = tokenizer.apply_chat_template(MULTI, tokenize=False)
    assert "<|im_start|>tool\n" in rendered  # the SmolLM2 template renders tool turns
    ids, mask, prompt_length = tokenize_conversation(tokenizer, MULTI)
    runs = spans(ids, mask)
    assert [m for m, _ in runs] == [0, 1, 0, 1]
    learned = [decode(tokenizer, toks) for m, toks in runs if m]
    assert [text.removesuffix("\n") for text in learned] == ["Paris.<|im_end|>", "Berlin, of course.<|im_end|>"]
    not_learned = "".join(decode(tokenizer, toks) for m, toks in runs if not m)
    for turn in MULTI:
        if turn["role"] != "assistant":
            assert turn["content"] in not_learned
    for text in ("Paris.", "Berlin, of course."):
        assert text not in not_learned
    # the prompt length is what precedes the first assistant turn
    assert prompt_length == len(runs[0][1])
    assert decode(tokenizer, ids) == rendered


def test_truncation_cuts_ids_and_mask_together(tokenizer):
    ids, mask, _ = tokenize_conversation(tokenizer, MULTI)
    short_ids, short_mask, _ = tokenize_conversation(tokenizer, MULTI, max_length=30)
    assert short_ids == ids[:30] and short_mask == mask[:30]


def test_conversation_without_assistant_turn(tokenizer):
    with pytest.raises(ValueError, match="no assistant turn"):
        tokenize_conversation(tokenizer, SINGLE[:1])


def test_collate_right_pads_with_a_loss_mask(tokenizer):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    batch = collate(tokenizer, [MULTI, short])
    assert set(batch) == {"prompt", "response", "prompt_lengths", "input_ids", "attention_mask", "loss_mask"}
    assert batch["prompt"] == ["What is the capital of France?", "Hi"]
    assert batch["response"] == ["Berlin, of course.", "Hello"]
    ids_long, mask_long, pl_long = tokenize_conversation(tokenizer, MULTI)
    ids_short, mask_short, pl_short = tokenize_conversation(tokenizer, short)
    assert batch["prompt_lengths"] == [pl_long, pl_short]
    width = len(ids_long)
    n = len(ids_short)
    assert n < width
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["loss_mask"].shape == (2, width)
    for key in ("input_ids", "attention_mask", "loss_mask"):
        assert batch[key].dtype == torch.long
    assert batch["input_ids"][0].tolist() == ids_long
    assert batch["loss_mask"][0].tolist() == mask_long
    assert batch["attention_mask"][0].tolist() == [1] * width
    # row 1: real tokens first, padding at the end
    assert batch["input_ids"][1, :n].tolist() == ids_short
    assert (batch["input_ids"][1, n:] == tokenizer.pad_token_id).all()
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (width - n)
    assert batch["loss_mask"][1, :n].tolist() == mask_short
    assert batch["loss_mask"][1, n:].sum() == 0
    # loss only where attended
    assert ((batch["loss_mask"] == 1) <= (batch["attention_mask"] == 1)).all()


def test_turn_end_token_ids_contain_im_end(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert isinstance(im_end, int) and im_end != tokenizer.unk_token_id
    ids = turn_end_token_ids(tokenizer)
    assert im_end in ids
    assert tokenizer.eos_token_id in ids


def test_render_prompt_ends_with_the_generation_prompt(tokenizer):
    text = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_learn_from_counts_from_the_end_when_negative(tokenizer):
    ids, all_turns, _ = tokenize_conversation(tokenizer, MULTI)
    last = tokenize_conversation(tokenizer, MULTI, learn_from=-1)
    assert last == tokenize_conversation(tokenizer, MULTI, learn_from=len(MULTI) - 1)
    learned = decode(tokenizer, [t for t, m in zip(last[0], last[1]) if m])
    assert learned.removesuffix("\n") == "Berlin, of course.<|im_end|>"  # the first reply is context
    assert tokenize_conversation(tokenizer, MULTI, learn_from=-100)[1] == all_turns  # before the start: every turn


def test_learn_from_indices_learn_exactly_those_assistant_turns(tokenizer):
    ids, mask, prompt_length = tokenize_conversation(tokenizer, MULTI, learn_from=[5])  # the second reply only
    learned = [decode(tokenizer, toks).removesuffix("\n") for m, toks in spans(ids, mask) if m]
    assert learned == ["Berlin, of course.<|im_end|>"]
    assert prompt_length == mask.index(1)  # everything before it is context
    assert tokenize_conversation(tokenizer, MULTI, learn_from=[2, 5]) == tokenize_conversation(tokenizer, MULTI)
    with pytest.raises(ValueError, match="not assistant turns"):
        tokenize_conversation(tokenizer, MULTI, learn_from=[3])  # a tool turn


def test_a_template_that_rewrites_past_turns_is_refused_not_mislearned(tokenizer):
    """Qwen3-style templates strip past reasoning: turn-by-turn masks would put loss on the wrong tokens."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}"
        "{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>hm</think>A"},
            {"role": "user", "content": "more please"}, {"role": "assistant", "content": "B"}]
    assert tokenize_conversation(tok, chat, learn_from=[3])[1]  # the last turn alone is fine
    with pytest.raises(SelfSFTError, match="does not render conversations prefix-consistently"):
        tokenize_conversation(tok, chat, learn_from=[1, 3])
