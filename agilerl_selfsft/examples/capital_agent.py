"""A tool-calling capital agent (Agent-lightning's ``capital_agent`` design) for multi-turn self-training.

The policy has one tool, ``country_capital_lookup(country)``, backed by the capitals task data. The agent
asks the policy the task's question with the tool offered, runs every tool call it makes and feeds the
result back as a ``tool`` turn, for at most ``MAX_TURNS`` policy turns; the reply without a tool call is the
final answer. Two example exchanges (countries of the train split, left out of training by
:func:`train_tasks`) show the format; they are context, never learned.

Reward (what selection ranks by): 0.5 for a correct tool call (the first call names
``country_capital_lookup`` with the task's country) + 0.5 when the final answer names the capital. With the
selection threshold at 1.0, only trajectories that used the tool correctly *and* answered right are learned.

The agent also returns its measurements as info (reported by the loop as ``train_<key>`` / ``eval_<key>``):
``tool_called`` (some reply parsed as a tool call), ``correct_tool_call``, ``tool_call_error`` (a
``<tool_call>`` that could not be parsed), ``answer_correct``.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

from agilerl_selfsft.data.tasks import CAPITALS_DIR, load_tasks
from agilerl_selfsft.data.tools import tool_call_text
from agilerl_selfsft.generation.agents import Chat
from agilerl_selfsft.samples import Task

TOOL_NAME = "country_capital_lookup"
MAX_TURNS = 3
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Look up the capital city of a country.",
        "parameters": {
            "type": "object",
            "properties": {"country": {"type": "string", "description": "The country's name"}},
            "required": ["country"],
        },
    },
}
SYSTEM = f"Always call {TOOL_NAME} before you answer a question about a capital."
SHOT_COUNTRIES = {"Mongolia": "Ulaanbaatar", "Jamaica": "Kingston"}  # train countries, kept out of training


def _shot(country: str, capital: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": tool_call_text(TOOL_NAME, {"country": country})},
        {"role": "tool", "name": TOOL_NAME, "content": capital},
        {"role": "assistant", "content": f"The capital of {country} is {capital}."},
    ]


EXAMPLES = [turn for country, capital in SHOT_COUNTRIES.items() for turn in _shot(country, capital)]


def normalise(text: str) -> str:
    """Case-, accent- and article-insensitive form of a name: ``"the Czech Republic"`` -> ``"czech republic"``."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(w for i, w in enumerate(text.split()) if not (i == 0 and w == "the"))


def country_of(task: Task) -> str:
    """The country a capitals task asks about."""
    prompt = task.prompt if isinstance(task.prompt, str) else task.messages[-1]["content"]
    match = re.search(r"capital of (.+?)\?", prompt)
    return match.group(1) if match else prompt


@lru_cache(maxsize=1)
def capitals() -> dict[str, list[str]]:
    """The lookup table: normalised country name -> accepted capital names (train and eval splits)."""
    table = {}
    for split in ("train", "eval"):
        for task in load_tasks(CAPITALS_DIR / f"{split}.jsonl"):
            answer = task.columns["answer"]
            table[normalise(country_of(task))] = [answer] if isinstance(answer, str) else list(answer)
    return table


def country_capital_lookup(country: str) -> str:
    """The tool: the capital of ``country``, or a short error text the model reads."""
    found = capitals().get(normalise(country))
    return found[0] if found else f"Error: unknown country {country!r}"


def run_tool(call: dict[str, Any]) -> str:
    """Execute one parsed tool call (an unknown tool or bad arguments come back as an error text)."""
    function = call["function"]
    if function["name"] != TOOL_NAME:
        return f"Error: unknown tool {function['name']!r}"
    country = function["arguments"].get("country")
    if not isinstance(country, str):
        return "Error: country_capital_lookup needs a string argument 'country'"
    return country_capital_lookup(country)


def names_capital(text: str, answers: list[str]) -> bool:
    """Whether ``text`` names one of ``answers`` as whole words (case- and accent-insensitive)."""
    text = f" {normalise(text)} "
    return any(f" {normalise(a)} " in text for a in answers)


def capital_agent(task: Task, chat: Chat) -> tuple[float, dict[str, float]]:
    """Answer a capitals task with the lookup tool; the reward and the measurements described above."""
    country = country_of(task)
    answers = task.columns["answer"]
    answers = [answers] if isinstance(answers, str) else list(answers)
    messages = [{"role": "system", "content": SYSTEM}, *EXAMPLES, *(m for m in task.messages if m["role"] != "system")]
    first_call, called, error, answer = None, False, False, ""
    for _ in range(MAX_TURNS):
        reply = chat(messages, tools=[LOOKUP_TOOL])
        messages.append(reply)
        if "tool_call_error" in reply:  # an unparseable tool call ends the episode without an answer
            error = True
            break
        if not reply["tool_calls"]:
            answer = reply["content"]
            break
        called = True
        first_call = first_call or reply["tool_calls"][0]["function"]
        for call in reply["tool_calls"]:
            messages.append({"role": "tool", "name": call["function"]["name"], "content": run_tool(call)})
    correct_call = (
        first_call is not None
        and first_call["name"] == TOOL_NAME
        and normalise(str(first_call["arguments"].get("country", ""))) == normalise(country)
    )
    correct_answer = bool(answer) and names_capital(answer, answers)
    reward = 0.5 * correct_call + 0.5 * correct_answer
    info = {"tool_called": float(called), "correct_tool_call": float(correct_call),
            "tool_call_error": float(error), "answer_correct": float(correct_answer)}
    return reward, info


def train_tasks() -> list[Task]:
    """The capitals train split without the countries of the two example exchanges (ids renumbered)."""
    shots = {normalise(c) for c in SHOT_COUNTRIES}
    tasks = [t for t in load_tasks(CAPITALS_DIR / "train.jsonl") if normalise(country_of(t)) not in shots]
    for i, task in enumerate(tasks):
        task.id = i
    return tasks


def eval_tasks() -> list[Task]:
    """The held-out capitals split (40 well-known countries)."""
    return load_tasks(CAPITALS_DIR / "eval.jsonl")
