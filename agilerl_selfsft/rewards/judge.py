"""``judge``: a local model scores each completion from a rubric, for tasks that have no checker.

The judge reads one rubric prompt per completion (``template``, with the fields ``{prompt}``,
``{completion}``, ``{low}``, ``{high}`` and any column of the row) and replies; the score is parsed from the
reply and normalised to [0, 1]:

- ``scale: [low, high]``: the first number of the reply, which must lie on the scale, maps linearly
  (``low`` → 0, ``high`` → 1);
- ``scale: yes_no``: a reply whose first word is yes scores 1, no scores 0.

A reply that gives neither scores 0 and is counted (``judge_unparseable``). The judge is ``model: policy``
— the frozen reference adapter of the agent being trained (self-rewarding, no second model in memory; the
loop hands the agent over) — or any :func:`~agilerl_selfsft.models.load_model` name or folder, loaded once
per process. All completions of a call are judged in one batched call of our own decode loop
(:func:`agilerl_selfsft.generation.decode.sample`), greedy unless ``greedy: false``; the reference adapter
and a loaded judge never change, so verdicts are cached per judge and rubric text (``judge_cached`` counts
the hits). A greedy judge draws no random numbers, so it leaves a resumed run exact.
"""

from __future__ import annotations

import contextlib
import functools
import re
import weakref
from typing import Any

from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.generation import decode
from agilerl_selfsft.models import load_model, resolve_model_path
from agilerl_selfsft.rewards.checks import NUMBER, as_number
from agilerl_selfsft.rewards.scoring import RewardValues

DEFAULT_TEMPLATE = (
    "Here is a question and an answer to it.\n\nQuestion: {prompt}\n\nAnswer: {completion}\n\n"
    "Is the answer correct and helpful? Rate it from {low} (wrong or unhelpful) to {high} (correct and "
    "helpful). Reply with the number only."
)
YES_NO_TEMPLATE = (
    "Here is a question and an answer to it.\n\nQuestion: {prompt}\n\nAnswer: {completion}\n\n"
    "Is the answer correct? Reply with yes or no only."
)
_CACHES: weakref.WeakKeyDictionary[Any, dict[str, float | None]] = weakref.WeakKeyDictionary()
_CACHE_LIMIT = 200_000  # verdicts kept per judge; the oldest half goes when it is full


def judge(
    prompts: list, completions: list[str], model: str = "policy", template: str | None = None,
    scale: list[float] | tuple[float, float] | str = (1, 10), max_new_tokens: int = 8, greedy: bool = True,
    policy: Any = None, **columns: Any,
) -> RewardValues:
    """Each completion's score by the judge, in [0, 1] (see the module).

    :param model: ``"policy"`` (the agent's frozen reference adapter) or a model name or folder, defaults to
        ``"policy"``
    :param template: the rubric, defaults to None (:data:`DEFAULT_TEMPLATE`, or :data:`YES_NO_TEMPLATE` for
        ``scale: yes_no``)
    :param scale: ``[low, high]`` or ``"yes_no"``, defaults to ``(1, 10)``
    :param max_new_tokens: the longest reply, defaults to 8
    :param greedy: decode the judge's replies greedily, defaults to True
    :param policy: the agent being trained (handed over by the loop), needed for ``model: policy``
    :raises SelfSFTError: for a bad scale or template, or ``model: policy`` without an agent
    """
    low, high = _scale(scale)
    template = template or (YES_NO_TEMPLATE if scale == "yes_no" else DEFAULT_TEMPLATE)
    texts = [_rubric(template, i, p, c, low, high, columns) for i, (p, c) in enumerate(zip(prompts, completions,
                                                                                         strict=True))]
    cache = _CACHES.setdefault(_judge_net(model, policy)[0], {}) if greedy else {}
    todo = sorted({t for t in texts if t not in cache})
    hits = sum(t in cache for t in texts)
    if todo:
        if len(cache) + len(todo) > _CACHE_LIMIT:
            for key in list(cache)[: len(cache) // 2]:
                del cache[key]
        for text, reply in zip(todo, judge_replies(todo, model, policy, max_new_tokens, greedy), strict=True):
            cache[text] = parse_score(reply, scale, low, high)
    verdicts = [cache[t] for t in texts]
    return RewardValues([v if v is not None else 0.0 for v in verdicts], {
        "judge_unparseable": float(sum(v is None for v in verdicts)), "judge_cached": float(hits),
    })


def check_options(model: str = "policy", scale: Any = (1, 10), max_new_tokens: int = 8, **_: Any) -> None:
    """Refuse a bad ``scale`` or ``max_new_tokens`` when the reward is resolved, before any work (a judge model
    that is not there is named when it first loads)."""
    _scale(scale)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SelfSFTError(f"judge: max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if not isinstance(model, str):
        raise SelfSFTError(f"judge: model must be 'policy' or a model name or folder, got {model!r}")


def parse_score(reply: str, scale: Any, low: float, high: float) -> float | None:
    """The reply's score normalised to [0, 1], or None when it gives none on the scale."""
    if scale == "yes_no":
        words = re.findall(r"[a-z]+", reply.casefold())
        return {"yes": 1.0, "no": 0.0}.get(words[0]) if words else None
    match = NUMBER.search(reply)
    value = as_number(match.group()) if match else None
    if value is None or not low <= value <= high:
        return None
    return (value - low) / (high - low)


def _scale(scale: Any) -> tuple[float, float]:
    if scale == "yes_no":
        return 0.0, 1.0
    ok = isinstance(scale, (list, tuple)) and len(scale) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
    if not ok or not scale[0] < scale[1]:
        raise SelfSFTError(f"judge: scale must be [low, high] with low < high, or yes_no; got {scale!r}")
    return float(scale[0]), float(scale[1])


def _rubric(template: str, i: int, prompt: Any, completion: str, low: float, high: float,
            columns: dict[str, list]) -> str:
    if isinstance(prompt, list):  # a chat: the question is its last user turn
        prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    fields = {name: values[i] for name, values in columns.items()}
    try:
        return template.format(**fields, prompt=prompt, completion=completion, low=f"{low:g}", high=f"{high:g}")
    except (KeyError, IndexError, ValueError) as exc:
        raise SelfSFTError(f"judge: the template has a field the row does not fill: {exc}") from None


def judge_replies(texts: list[str], model: str = "policy", policy: Any = None, max_new_tokens: int = 8,
                  greedy: bool = True) -> list[str]:
    """The judge's reply to each rubric text (one batched decode call; arguments as :func:`judge`)."""
    net, tokenizer = _judge_net(model, policy)
    sampling = decode.Sampling(max_new_tokens=max_new_tokens, stop_token_ids=turn_end_token_ids(tokenizer),
                               greedy=greedy)
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    rows = policy.generation_batch_size if model == "policy" else 64
    adapter = policy.select_adapter("reference") if model == "policy" else contextlib.nullcontext()
    with adapter:  # the policy's frozen start, never the adapter being trained
        net.eval()
        return [g[0] for g in decode.sample(net, tokenizer, rendered, 1, sampling, max_batch_rows=rows).texts]


def _judge_net(model: str, policy: Any) -> tuple[Any, Any]:
    """The judge's network and tokenizer (whose network is also the key of its verdict cache)."""
    if model == "policy":
        if policy is None:
            raise SelfSFTError("judge: model 'policy' needs the agent being trained; score through SelfSFTGym "
                               "(the loop hands it over) or name a judge model")
        return policy.actor, policy.tokenizer
    device = next(policy.actor.parameters()).device if policy is not None else "cpu"
    return _loaded(resolve_model_path(model), str(device))


@functools.lru_cache(maxsize=2)
def _loaded(path: str, device: str) -> tuple[Any, Any]:
    """A judge model and its tokenizer, loaded once per process (frozen, in eval mode)."""
    net, tokenizer = load_model(path, device=device)
    net.eval().requires_grad_(False)
    return net, tokenizer
