"""Multi-turn agents: your agent function talks to the policy through a chat callable and returns a reward.

``agent(task, chat) -> reward`` (or ``(reward, {"name": number})``) is plain, sequential Python.
``chat(messages, tools=None)`` returns ``{"role": "assistant", "content": text, "tool_calls": [...]}``:
``content`` is what the model wrote (append the message as it is, so later turns and training see exactly
that), ``tool_calls`` the calls :func:`parse_tool_calls` read from it. A call it cannot read does not raise:
``tool_calls`` is empty and ``tool_call_error`` says why. Tools are JSON schemas or documented functions;
a template that renders tools gets them through ``apply_chat_template(tools=...)``, one that does not
(SmolLM2's) gets :data:`TOOLS_PROMPT` (the Hermes / Qwen2.5 format) in its system message.

:func:`rollout` runs each conversation in its own thread; when every live one waits on ``chat`` (or has
ended), ONE ``policy.sample`` call on the calling thread answers them all. A trajectory is the last call's
context plus its reply; it learns every reply the policy generated in that context (tool calls included),
never system, user or tool turns nor assistant turns the agent wrote (few-shot examples). The README's
"Agents" section has a worked example.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.data.tools import (
    ToolParser,
    as_tool_text,
    parse_tool_calls,
    template_supports_tools,
    tool_schema,
    with_tools_prompt,
)
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Generations, Message, Scored, Task, Trajectory

Chat = Callable[..., Message]
AgentFn = Callable[[Task, Chat], Any]
_RESERVED_INFO = ("reward", "reward_greedy", "solved", "tokens", "seconds")  # train_/eval_ names the loop writes
_KEPT_KEYS = ("role", "content", "name", "tool_call_id")  # what a context message keeps (tool turns' name/id)


@dataclass
class Rollouts:
    """What :func:`rollout` produced: ``trajectories[i][k]`` is the k-th conversation of task i.

    :param generate_calls: ``policy.sample`` calls made (one per round of turns)
    :param batch_sizes: conversations answered by each of them
    :param num_tokens: tokens generated in all
    :param seconds: wall time of the rollout
    """

    trajectories: list[list[Trajectory]] = field(default_factory=list)
    generate_calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    num_tokens: int = 0
    seconds: float = 0.0

    @property
    def flat(self) -> list[Trajectory]:
        """Every trajectory, task by task."""
        return [t for group in self.trajectories for t in group]

    @property
    def tool_calls(self) -> int:
        """Tool calls parsed from the policy's replies."""
        return sum(t.tool_calls for t in self.flat)

    @property
    def tool_call_errors(self) -> int:
        """Replies with a ``<tool_call>`` that could not be parsed."""
        return sum(t.tool_call_errors for t in self.flat)

    def scored(self) -> list[Scored]:
        """The trajectories as training samples, task by task."""
        return [t.to_scored() for t in self.flat]

    def generations(self) -> Generations:
        """A summary in the loop's terms: each conversation's last reply, finish flags, tokens and time."""
        return Generations(
            texts=[[t.messages[-1]["content"] for t in group] for group in self.trajectories],
            finished=[[t.finished for t in group] for group in self.trajectories],
            num_tokens=self.num_tokens, seconds=self.seconds, batch_rows=list(self.batch_sizes),
            peak_rows=max(self.batch_sizes, default=0),
        )


def rollout(
    policy: Any,
    agent: AgentFn,
    tasks: list[Task],
    num_generations: int = 1,
    greedy: bool = False,
    temperature: float | None = None,
    tool_parser: ToolParser = parse_tool_calls,
    max_conversations: int = 1024,
) -> Rollouts:
    """Run ``agent`` ``num_generations`` times on every task against ``policy``, batching turns across conversations.

    :param policy: a :class:`~agilerl_selfsft.SelfSFT` (anything with its ``sample`` and ``tokenizer``)
    :param agent: ``agent(task, chat) -> reward`` or ``-> (reward, info)``, info a dict of numbers (means of
        them are reported by the training loop)
    :param tasks: the tasks to run
    :param num_generations: K, conversations per task, defaults to 1
    :param greedy: decode greedily (one conversation per task), defaults to False
    :param temperature: sampling temperature, defaults to None (the policy's)
    :param tool_parser: reads tool calls from a reply (see :func:`parse_tool_calls`), defaults to that
    :param max_conversations: most conversations (threads) live at once; the next start as others end,
        defaults to 1024
    :raises SelfSFTError: naming the task when the agent raises, returns something that is not a finite
        number, or ends without calling ``chat``
    """
    start = time.perf_counter()
    k = 1 if greedy else num_generations
    conversations = [task for task in tasks for _ in range(k)]
    native = template_supports_tools(policy.tokenizer)
    name = getattr(agent, "__name__", repr(agent))
    out = Rollouts()

    def where(task: Task) -> str:
        return f"agent {name!r} on task {task.id} ({_preview(task)})"

    def respond(batch: list[tuple[int, _Request]]) -> list[_Reply]:
        tools = [r.tools for _, r in batch]
        gens = policy.sample([r.context for _, r in batch], 1, greedy=greedy, temperature=temperature,
                             tools=tools if any(t is not None for t in tools) else None)
        out.generate_calls += 1
        out.batch_sizes.append(len(batch))
        out.num_tokens += gens.num_tokens
        return [_reply(texts[0], done[0], tool_parser, where(conversations[c]))
                for (c, _), texts, done in zip(batch, gens.texts, gens.finished, strict=True)]

    scheduler = _Scheduler(len(conversations), respond, native, max_conversations, policy.tokenizer)
    results = scheduler.run(agent, conversations)

    if scheduler.errors:  # the other conversations were stopped
        c = min(scheduler.errors)
        exc = scheduler.errors[c]
        raise SelfSFTError(f"{where(conversations[c])} raised {type(exc).__name__}: {exc}") from exc
    trajectories = []
    for c, task in enumerate(conversations):
        reward, info = _check_result(results[c], where(task))
        trajectories.append(_trajectory(task, scheduler.calls[c], reward, info, where(task)))
    out.trajectories = [trajectories[i * k : (i + 1) * k] for i in range(len(tasks))]
    out.seconds = time.perf_counter() - start
    return out


# ---- internals ----
@dataclass
class _Request:
    context: list[Message]
    tools: list[dict[str, Any]] | None


@dataclass
class _Reply:
    """A generated reply: the message the agent gets (with its parsed calls), and its finish flag."""

    message: Message
    finished: bool
    error: bool  # a tool call that could not be parsed


def _reply(text: str, finished: bool, parser: ToolParser, where: str) -> _Reply:
    try:
        result = parser(text)
    except Exception as exc:  # noqa: BLE001 -- the user's parser: name it and the task, in one line
        raise SelfSFTError(f"tool_parser raised {type(exc).__name__}: {exc} on a reply of {where}") from exc
    calls, error = result if isinstance(result, tuple) and len(result) == 2 else (None, None)
    if not isinstance(calls, list) or not (error is None or isinstance(error, str)):
        raise SelfSFTError(f"tool_parser must return (list of calls, error or None), got {result!r:.80}")
    message: Message = {"role": "assistant", "content": text, "tool_calls": calls}
    if error is not None:
        message["tool_call_error"] = error
    return _Reply(message, finished, error is not None)


@dataclass
class _Call:
    context: list[Message]
    tools: list[dict[str, Any]] | None
    reply: _Reply


class _Stopped(BaseException):  # noqa: N818 -- BaseException: an agent's `except Exception` must not catch it
    """Raised in an agent thread whose rollout is stopping (another conversation failed)."""


class _Scheduler:
    """Runs one thread per conversation; answers all waiting ``chat`` calls with one batched call at a time."""

    def __init__(
        self, n: int, respond: Callable[[list[tuple[int, _Request]]], list[_Reply]], native: bool, max_live: int,
        tokenizer: Any,
    ) -> None:
        self.respond, self.native, self.max_live, self.tokenizer = respond, native, max(max_live, 1), tokenizer
        self.cond = threading.Condition()
        self.pending: dict[int, _Request] = {}  # requests of live conversations not yet answered
        self.replies: dict[int, _Reply] = {}
        self.waiting: set[int] = set()  # conversations inside a chat call
        self.ended: set[int] = set()  # conversations whose agent returned (or raised)
        self.live = 0  # conversations started and not ended
        self.stopped = False
        self.errors: dict[int, BaseException] = {}
        self.calls: list[list[_Call]] = [[] for _ in range(n)]

    def chat_for(self, c: int) -> Chat:
        def chat(messages: list[Message], tools: list[Any] | None = None) -> Message:
            request = _request(messages, tools, self.native, self.tokenizer)
            with self.cond:
                if self.stopped:
                    raise _Stopped
                if c in self.ended:
                    raise SelfSFTError("chat was called after the agent returned")
                if c in self.waiting:
                    raise SelfSFTError("chat was called again before its previous call returned")
                self.waiting.add(c)
                self.pending[c] = request
                self.cond.notify_all()
                self.cond.wait_for(lambda: c in self.replies or self.stopped)
                if self.stopped:
                    raise _Stopped
                reply = self.replies.pop(c)
                self.waiting.discard(c)
            self.calls[c].append(_Call(request.context, request.tools, reply))
            return {**reply.message, "tool_calls": [dict(call) for call in reply.message["tool_calls"]]}

        return chat

    def run(self, agent: AgentFn, tasks: list[Task]) -> dict[int, Any]:
        results: dict[int, Any] = {}

        def work(c: int) -> None:
            try:
                results[c] = agent(tasks[c], self.chat_for(c))
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 -- reported by rollout(), naming the task
                self.errors[c] = exc
            finally:
                with self.cond:
                    self.ended.add(c)
                    self.pending.pop(c, None)  # a call left behind (from another thread) is never answered
                    self.live -= 1
                    self.cond.notify_all()

        threads: list[threading.Thread] = []
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: len(self.pending) == self.live or self.errors)
                    if self.errors:
                        break
                    if len(threads) < len(tasks) and self.live < self.max_live:
                        # every live conversation waits or has ended (a deterministic point): start the next
                        # ones, and answer them together with the waiting ones
                        while len(threads) < len(tasks) and self.live < self.max_live:
                            threads.append(threading.Thread(target=work, args=(len(threads),), daemon=True))
                            threads[-1].start()
                            self.live += 1
                        continue
                    if self.live == 0:
                        break
                    batch = sorted(self.pending.items())
                    self.pending.clear()
                replies = self.respond(batch)  # the policy, on this thread
                with self.cond:
                    self.replies.update((c, reply) for (c, _), reply in zip(batch, replies, strict=True))
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()
            for thread in threads:
                thread.join()
        return results


def _request(messages: Any, tools: list[Any] | None, native: bool, tokenizer: Any) -> _Request:
    """The context the policy answers: the messages as the template needs them, with the tools; rendered
    once here, on the agent's thread, so that a template that refuses them names the task."""
    if not isinstance(messages, list) or not messages:
        raise SelfSFTError(f"chat needs a non-empty list of messages, got {messages!r:.80}")
    context = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise SelfSFTError(f"chat: message {i} needs a string 'role' and a string 'content', got {m!r:.80}")
        if m.get("tool_calls") and not m["content"].strip():  # an example turn of structured calls only
            try:
                m = as_tool_text([m])[0]
            except SelfSFTError as exc:
                raise SelfSFTError(f"chat: message {i}: {exc}") from None
        context.append({key: m[key] for key in _KEPT_KEYS if key in m})  # an assistant turn: its text only
    schemas = [tool_schema(t) for t in tools] if tools else None
    if schemas is not None and not native:
        context, schemas = with_tools_prompt(context, schemas), None
    try:
        render_prompt(tokenizer, context, schemas)
    except Exception as exc:  # noqa: BLE001 -- the template's own reason (roles it refuses…), in one line
        problem = f"{type(exc).__name__}: {exc}"
        raise SelfSFTError(f"chat: the chat template cannot render these messages ({problem})") from None
    return _Request(context, schemas)


def _check_result(value: Any, where: str) -> tuple[float, dict[str, float]]:
    """The reward (and info) an agent returned, checked: finite numbers only."""
    info: Any = {}
    if isinstance(value, tuple) and len(value) == 2:
        value, info = value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise SelfSFTError(f"{where} returned {value!r:.80}, not a number: return a float reward or (reward, info)")
    if not math.isfinite(float(value)):
        raise SelfSFTError(f"{where} returned the reward {float(value)}: rewards must be finite")
    if not isinstance(info, dict):
        raise SelfSFTError(f"{where} returned info of type {type(info).__name__}, not a dict of numbers")
    clean = {}
    for key, v in info.items():
        if str(key) in _RESERVED_INFO:
            raise SelfSFTError(f"{where} returned info[{key!r}]: the loop reports that itself, rename it")
        if not isinstance(v, Real) or not math.isfinite(float(v)):
            raise SelfSFTError(f"{where} returned info[{key!r}] = {v!r:.80}, not a finite number")
        clean[str(key)] = float(v)
    return float(value), clean


def _trajectory(task: Task, calls: list[_Call], reward: float, info: dict[str, float], where: str) -> Trajectory:
    """The last call's context plus its reply, learning every reply of the policy found in it unchanged."""
    if not calls:
        raise SelfSFTError(f"{where} returned without calling chat: there is nothing to learn from")
    last = calls[-1]
    final = [*last.context, _as_turn(last.reply)]
    learned: dict[int, _Call] = {}
    for call in calls:
        n = len(call.context)
        same_context = call.tools == last.tools and final[:n] == call.context
        if n < len(final) and same_context and final[n] == _as_turn(call.reply):
            learned[n] = call
    return Trajectory(
        task, final, sorted(learned), reward, info, last.tools,
        finished=all(call.reply.finished for call in learned.values()),
        turns=len(calls),
        tool_calls=sum(len(call.reply.message["tool_calls"]) for call in calls),
        tool_call_errors=sum(call.reply.error for call in calls),
    )


def _as_turn(reply: _Reply) -> Message:
    return {"role": "assistant", "content": reply.message["content"]}


def _preview(task: Task) -> str:
    text = task.prompt if isinstance(task.prompt, str) else next(
        (m["content"] for m in reversed(task.messages) if m["role"] == "user"), "")
    text = " ".join(str(text).split())
    return repr(text if len(text) <= 60 else text[:57] + "...")
