"""The records that pass between the stages of the loop.

- :class:`Task`: one prompt to answer (the *prompts* stage hands these to generation);
- :class:`Generations`: what one sampling call produced (generation → scoring);
- :class:`Trajectory`: one multi-turn conversation of an agent with the policy (agent rollouts → scoring);
- :class:`Scored`: one scored sample (scoring → selection → buffer → training batches).

A chat turn is a :data:`Message`, ``{"role", "content", ...}`` as chat templates take it. Plain data only: these
records are what the run state saves (as JSON) and what a population's members share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


@dataclass
class Task:
    """One prompt of a task.

    :param id: position of the row in its split; selection groups completions by it (never by text)
    :param messages: the chat to answer (system and user turns)
    :param prompt: what reward functions receive as the prompt: the ``prompt`` string, or the messages
    :param columns: the row's other fields, passed to reward functions as keyword lists
    """

    id: int
    messages: list[Message]
    prompt: Any
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generations:
    """What one sampling call produced.

    :param texts: ``texts[i][k]``, the k-th completion of prompt i (special tokens stripped)
    :param finished: ``finished[i][k]``, whether it ended with a stop (end-of-turn) token
    :param token_ids: ``token_ids[i][k]``, its token ids, up to and including the stop token
    :param num_tokens: tokens generated in all (up to and including each row's stop token)
    :param seconds: wall time of the call
    :param batch_rows: rows (prompts × K) admitted by each prefill, in order
    :param peak_rows: most rows decoded together in one step
    :param computed_rows: row-steps of decoding actually computed (live rows summed over steps)
    """

    texts: list[list[str]] = field(default_factory=list)
    finished: list[list[bool]] = field(default_factory=list)
    token_ids: list[list[list[int]]] = field(default_factory=list)
    num_tokens: int = 0
    seconds: float = 0.0
    batch_rows: list[int] = field(default_factory=list)
    peak_rows: int = 0
    computed_rows: int = 0


@dataclass
class Scored:
    """One training sample: the full chat (prompt turns + the completion) and its reward.

    A generated sample learns its completion (the last turn) only; a ``static`` one — a conversation of
    static SFT data, never generated nor scored (reward NaN) — learns every assistant turn; an agent's
    trajectory (:class:`Trajectory`) learns the turns ``learn_turns`` names: every reply the policy generated
    in it, tool calls included.
    """

    prompt_id: int
    messages: list[Message]
    completion: str
    reward: float
    finished: bool = True  # ended with an end-of-turn token, not cut off at max_new_tokens
    static: bool = False
    learn_turns: list[int] | None = None  # indices of the assistant turns that carry loss (None: see above)
    tools: list[dict[str, Any]] | None = None  # tool schemas the chat template renders with the messages
    info: dict[str, float] = field(default_factory=dict)  # an agent's own per-trajectory measurements
    terms: dict[str, float | None] = field(default_factory=dict)  # each reward function's value (None: no score)


@dataclass
class Trajectory:
    """One conversation of an agent with the policy.

    :param task: the task the agent was given
    :param messages: the final conversation, as the policy saw it (tools prompt included)
    :param learn_turns: indices of the policy's own replies in it: the turns training learns
    :param reward: what the agent returned
    :param info: the agent's own measurements (the dict of a ``(reward, info)`` return), defaults to {}
    :param tools: schemas a tool-rendering template renders with ``messages``, defaults to None
    :param finished: every learned reply ended with an end-of-turn token, defaults to True
    :param turns: chat calls the agent made, defaults to 0
    :param tool_calls: tool calls parsed from its replies, defaults to 0
    :param tool_call_errors: replies with a tool call that could not be parsed, defaults to 0
    """

    task: Task
    messages: list[Message]
    learn_turns: list[int]
    reward: float
    info: dict[str, float] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    finished: bool = True
    turns: int = 0
    tool_calls: int = 0
    tool_call_errors: int = 0

    def to_scored(self) -> Scored:
        """This trajectory as a training sample (its completion: a transcript from the first learned turn)."""
        tail = self.messages[self.learn_turns[0]:]
        transcript = "\n".join(f"[{m['role']}] {m['content']}" for m in tail)
        return Scored(self.task.id, self.messages, transcript, self.reward, self.finished,
                      learn_turns=list(self.learn_turns), tools=self.tools, info=dict(self.info))
