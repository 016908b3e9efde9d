"""Chat rendering: prompts for generation, and token masks that cover assistant turns only.

A sample is a list of chat messages (``{"role", "content"}``). Rendering uses the tokenizer's own chat
template; the loss mask is built by rendering the conversation prefix before and after each assistant turn,
so it is right for any template that renders a prefix of a conversation as a prefix of its text
(ChatML, Llama-3, Qwen, Mistral…). System, user and tool turns never carry loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Message


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict] | None = None) -> str:
    """The text a model continues to answer ``messages`` (the template's generation prompt included).

    :param tools: tool schemas for a template that renders them (``apply_chat_template(tools=...)``),
        defaults to None
    """
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def turn_end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn token (e.g. ``<|im_end|>``) and eos."""
    marker = "SELFSFT_MARK"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    ids: list[int] = []
    tail = text[text.rfind(marker) + len(marker) :]
    # Special tokens as the vocabulary marks them: some tokenizers (SmolLM2's) flag <|im_end|> special in
    # added_tokens_decoder without listing it in all_special_ids.
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if tail:
        first = tokenizer(tail, add_special_tokens=False)["input_ids"][:1]
        if first and first[0] in special:
            ids.append(first[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    max_length: int | None = None,
    learn_from: int | Sequence[int] = 0,
    tools: list[dict] | None = None,
) -> tuple[list[int], list[int], int]:
    """Token ids of a whole conversation, a 0/1 mask of the assistant-turn tokens, and the prompt length.

    The prompt length is the number of tokens before the first learned assistant turn (what AgileRL's SFT
    masks by).

    :param learn_from: index of the first message that may carry loss: assistant turns before it are context
        (e.g. a prompt's few-shot examples) and get mask 0; negative counts from the end, as in Python
        (``-1``: the last message only), defaults to 0 (every assistant turn: a multi-turn conversation
        learns each of its replies, never its system, user or tool turns). A sequence of indices instead
        names exactly the assistant turns that carry loss (an agent's trajectory: the policy's own replies,
        not the few-shot turns it was prompted with)
    :param tools: tool schemas the template renders (see :func:`render_prompt`), defaults to None
    """
    if isinstance(learn_from, int):
        start = max(len(messages) + learn_from, 0) if learn_from < 0 else learn_from
        learned = {i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= start}
    else:
        learned = set(learn_from)
        if any(not 0 <= i < len(messages) or messages[i]["role"] != "assistant" for i in learned):
            raise ValueError(f"learn_from names turns that are not assistant turns: {sorted(learned)}")
    ids: list[int] = []
    mask: list[int] = []
    prompt_length: int | None = None
    for i in sorted(learned):
        before = _encode(tokenizer, render_prompt(tokenizer, messages[:i], tools))
        through = _encode(tokenizer, tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False))
        if through[: len(before)] != before or before[: len(ids)] != ids:
            raise SelfSFTError(
                "the chat template does not render conversations prefix-consistently (it renders earlier turns "
                "differently once later ones follow, e.g. it strips past reasoning): its multi-turn conversations "
                "cannot be learned turn by turn"
            )
        if prompt_length is None:
            prompt_length = len(before)
        mask.extend([0] * (len(before) - len(ids)) + [1] * (len(through) - len(before)))
        ids = through
    if prompt_length is None:
        raise ValueError("the conversation has no assistant turn to learn from")
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask, prompt_length


def collate(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[Message]],
    max_length: int | None = None,
    learn_from: list[int | Sequence[int]] | None = None,
    tools: list[list[dict] | None] | None = None,
) -> dict[str, Any]:
    """A right-padded training batch in AgileRL's ``SFTPrompts`` format, plus ``loss_mask``.

    Keys: ``prompt``, ``response`` (texts, for logging), ``prompt_lengths``, ``input_ids``, ``attention_mask``
    and ``loss_mask`` (1 on every assistant-turn token, 0 on system/user/tool turns and padding).

    :param learn_from: per conversation, the first message that may carry loss (see
        :func:`tokenize_conversation`) or the indices of the turns that do, defaults to None (every assistant
        turn of every conversation)
    :param tools: per conversation, the tool schemas its template renders, defaults to None (none)
    """
    starts = learn_from if learn_from is not None else [0] * len(conversations)
    tools = tools if tools is not None else [None] * len(conversations)
    rows = [tokenize_conversation(tokenizer, c, max_length, i, t)
            for c, i, t in zip(conversations, starts, tools, strict=True)]
    width = max(len(ids) for ids, _, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, mask, _) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
        loss_mask[r, : len(ids)] = torch.tensor(mask)
    return {
        "prompt": [_first_user_text(c) for c in conversations],
        "response": [_last_assistant_text(c) for c in conversations],
        "prompt_lengths": [p for _, _, p in rows],
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
    }


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The rendered template already holds its special tokens (BOS where it emits one): add none.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _first_user_text(messages: list[Message]) -> str:
    return next((str(m["content"]) for m in messages if m["role"] == "user"), "")


def _last_assistant_text(messages: list[Message]) -> str:
    return next((str(m["content"]) for m in reversed(messages) if m["role"] == "assistant"), "")
