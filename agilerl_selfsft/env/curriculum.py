"""Difficulty-aware prompt sampling: spend generation on the prompts that can still teach.

Every train prompt keeps a history of its solve rates (the share of its samples at or above the selection
threshold, one rate per time it was sampled). :class:`Curriculum` walks the train prompts in shuffled passes,
as plain sampling does, and with :class:`DifficultySettings`:

- skips a prompt **mastered** in its last ``mastered_streak`` samplings (solve rate >= ``mastered`` each time),
  except with probability ``recheck``, which re-checks it;
- down-weights a prompt **never solved** in ``unsolved_tries`` samplings: it is sampled with probability
  ``unsolved_weight`` when it comes up;
- and :func:`sample_iteration` draws fresh prompts again (at most ``max_draws`` draws in all) until the
  iteration has ``prompts_per_iteration`` **informative** prompts — solved at least once but below
  ``mastered`` in this iteration — and gives ``extra_samples`` more samples to each informative prompt
  (adaptive K), both only while the iteration's generated tokens stay under ``token_budget``.

Without settings the walk is plain: every prompt once per pass, nothing skipped, one draw. The walk, the
history and the random draws are part of the environment's run state, so a resumed run samples as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.generation.collect import sample_scored
from agilerl_selfsft.samples import Generations, Scored, Task


@dataclass
class DifficultySettings:
    """The ``sampling:`` settings of difficulty-aware sampling (see the module docstring).

    :param mastered: solve rate at which a sampling counts as mastered, in (0, 1], defaults to 1.0
    :param mastered_streak: mastered samplings in a row before a prompt is skipped, >= 1, defaults to 2
    :param recheck: chance that a mastered prompt is sampled anyway when it comes up, in [0, 1], defaults to 0.1
    :param unsolved_tries: samplings without a solve before a prompt is down-weighted, >= 1, defaults to 3
    :param unsolved_weight: chance that such a prompt is sampled when it comes up, in [0, 1], defaults to 0.25
    :param max_draws: draws of prompts per iteration (the first one included), >= 1, defaults to 2
    :param extra_samples: more samples for each informative prompt of an iteration, >= 0, defaults to 0
    :param token_budget: generated tokens per iteration after which no refill or extra sample is drawn,
        defaults to None (no limit)
    """

    mastered: float = 1.0
    mastered_streak: int = 2
    recheck: float = 0.1
    unsolved_tries: int = 3
    unsolved_weight: float = 0.25
    max_draws: int = 2
    extra_samples: int = 0
    token_budget: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "mastered": (0 < self.mastered <= 1, "in (0, 1]"),
            "mastered_streak": (self.mastered_streak >= 1, "an integer >= 1"),
            "recheck": (0 <= self.recheck <= 1, "in [0, 1]"),
            "unsolved_tries": (self.unsolved_tries >= 1, "an integer >= 1"),
            "unsolved_weight": (0 <= self.unsolved_weight <= 1, "in [0, 1]"),
            "max_draws": (self.max_draws >= 1, "an integer >= 1"),
            "extra_samples": (self.extra_samples >= 0, "an integer >= 0"),
            "token_budget": (self.token_budget is None or self.token_budget >= 1, "an integer >= 1 or None"),
        }
        for name, (ok, what) in checks.items():
            if not ok:
                raise SelfSFTError(f"sampling.{name} must be {what}, got {getattr(self, name)!r}")


class Curriculum:
    """The walk over the train prompts and each prompt's solve-rate history.

    :param ids: the train prompts' task ids, in the order of the environment's ``train_tasks``
    :type ids: list[int]
    :param rng: the environment's random generator (shuffles and skip decisions)
    :type rng: numpy.random.Generator
    :param settings: difficulty settings, defaults to None (plain shuffled passes)
    :type settings: DifficultySettings, optional
    """

    def __init__(self, ids: list[int], rng: np.random.Generator, settings: DifficultySettings | None = None) -> None:
        self.ids = list(ids)
        self.rng = rng
        self.settings = settings
        self.order: list[int] = []  # positions still to come in this pass; the next is the last
        self.history: dict[int, dict[str, Any]] = {}  # task id -> {"tries", "solved", "recent": [rates]}
        self.skipped = {"mastered": 0, "unsolvable": 0}  # by the draws since the last take_skipped()

    def status(self, task_id: int) -> str:
        """``new``, ``mastered``, ``unsolvable`` or ``open`` (see the module docstring)."""
        seen, s = self.history.get(task_id), self.settings
        if seen is None or s is None:
            return "new"
        recent = seen["recent"][-s.mastered_streak:]
        if len(recent) == s.mastered_streak and all(rate >= s.mastered for rate in recent):
            return "mastered"
        if seen["tries"] >= s.unsolved_tries and seen["solved"] == 0:
            return "unsolvable"
        return "open"

    def draw(self, n: int, exclude: set[int] = frozenset()) -> list[int]:
        """Up to ``n`` positions of train prompts, walking shuffled passes, skipping ``exclude`` (task ids) and,
        with settings, mastered and down-weighted prompts; at most one pass is walked per call. When every
        prompt walked was skipped, the skipped ones are sampled (an iteration is never empty)."""
        out, passed = [], []
        for _ in range(len(self.ids)):
            if len(out) >= min(n, len(self.ids)):
                break
            if not self.order:
                self.order = [int(i) for i in self.rng.permutation(len(self.ids))]
            position = self.order.pop()
            if self.ids[position] in exclude:
                continue
            status = self.status(self.ids[position])
            if status == "mastered" and self.rng.random() >= self.settings.recheck:
                passed.append(position)
                self.skipped["mastered"] += 1
            elif status == "unsolvable" and self.rng.random() >= self.settings.unsolved_weight:
                passed.append(position)
                self.skipped["unsolvable"] += 1
            else:
                out.append(position)
        return out or passed[:n]

    def observe(self, scored: list[Scored], threshold: float) -> dict[int, float]:
        """Record each prompt's solve rate in ``scored`` (samples at or above ``threshold``); the rates by id."""
        rates = solve_rates(scored, threshold)
        keep = max(self.settings.mastered_streak, 1) if self.settings is not None else 1
        for task_id, rate in rates.items():
            seen = self.history.setdefault(task_id, {"tries": 0, "solved": 0, "recent": []})
            seen["tries"] += 1
            seen["solved"] += rate > 0
            seen["recent"] = [*seen["recent"], rate][-keep:]
        return rates

    def take_skipped(self) -> dict[str, int]:
        """The prompts the draws skipped since the last call, by reason (and the counts start again)."""
        skipped, self.skipped = self.skipped, {"mastered": 0, "unsolvable": 0}
        return skipped

    def state_dict(self) -> dict[str, Any]:
        """The walk and the history, as plain JSON values."""
        return {"order": [int(i) for i in self.order],
                "history": {str(k): dict(v) for k, v in self.history.items()},
                "settings": asdict(self.settings) if self.settings is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned."""
        self.order = [int(i) for i in state["order"]]
        self.history = {int(k): dict(v) for k, v in state.get("history", {}).items()}


def solve_rates(scored: list[Scored], threshold: float) -> dict[int, float]:
    """Each prompt's share of samples with reward >= ``threshold``, by prompt id (static samples left out)."""
    counts: dict[int, list[int]] = {}
    for s in scored:
        if not s.static:
            c = counts.setdefault(s.prompt_id, [0, 0])
            c[0] += s.reward >= threshold
            c[1] += 1
    return {task_id: solved / total for task_id, (solved, total) in counts.items()}


def sample_iteration(
    agent: Any, env: Any, tasks: list[Task], threshold: float
) -> tuple[list[Scored], Generations, dict[str, int]]:
    """Sample and score K completions for ``tasks`` and, with difficulty settings on ``env``, refill the iteration
    with fresh prompts and give informative prompts extra samples (see the module docstring); record the solve
    rates in the environment's history.

    :param agent: the policy (:class:`~agilerl_selfsft.algorithm.selfsft.SelfSFT`)
    :param env: the environment (a :class:`~agilerl_selfsft.env.gym.SelfSFTGym`): its ``curriculum``, its train
        prompts and its reward
    :param tasks: the iteration's first draw (:meth:`~agilerl_selfsft.env.gym.SelfSFTGym.sample_prompts`)
    :param threshold: the agent's selection threshold: a sample at or above it solves its prompt
    :return: every scored sample, the merged generations, and ``draws``, ``prompts_sampled``,
        ``informative_prompts``, ``prompts_skipped_mastered`` and ``prompts_unsolvable`` (skipped by the draws of
        this iteration, the first draw included), ``extra_samples``
    """
    curriculum, settings = env.curriculum, env.curriculum.settings
    scored, generations = sample_scored(agent, env, tasks)
    target, draws = len(tasks), 1
    rates = solve_rates(scored, threshold)
    ceiling = settings.mastered if settings is not None else 1.0  # at or above: mastered, not informative
    informative = lambda: [i for i, r in rates.items() if 0 < r < ceiling]  # noqa: E731
    budget_left = lambda: settings.token_budget is None or generations.num_tokens < settings.token_budget  # noqa: E731
    while settings is not None and draws < settings.max_draws and len(informative()) < target and budget_left():
        more = env.sample_prompts(target - len(informative()), exclude=set(rates))
        if not more:
            break
        new, made = sample_scored(agent, env, more)
        scored, generations, draws = scored + new, merge(generations, made), draws + 1
        rates.update(solve_rates(new, threshold))
    extra = 0
    if settings is not None and settings.extra_samples and budget_left():
        by_id = {t.id: t for t in env.train_tasks}
        chosen = [by_id[i] for i in informative() if i in by_id]
        if chosen:
            new, made = sample_scored(agent, env, chosen, num_generations=settings.extra_samples)
            scored, generations, extra = scored + new, merge(generations, made), len(new)
    rates = curriculum.observe(scored, threshold)  # the extra samples included
    skipped = curriculum.take_skipped()
    return scored, generations, {
        "draws": draws, "prompts_sampled": len(rates), "informative_prompts": len(informative()),
        "prompts_skipped_mastered": int(skipped["mastered"]), "prompts_unsolvable": int(skipped["unsolvable"]),
        "extra_samples": extra,
    }


def merge(a: Generations, b: Generations) -> Generations:
    """Two sampling calls' generations as one (prompts of ``a`` first)."""
    return Generations(texts=a.texts + b.texts, finished=a.finished + b.finished, token_ids=a.token_ids + b.token_ids,
                       num_tokens=a.num_tokens + b.num_tokens, seconds=a.seconds + b.seconds,
                       batch_rows=a.batch_rows + b.batch_rows, peak_rows=max(a.peak_rows, b.peak_rows),
                       computed_rows=a.computed_rows + b.computed_rows)
