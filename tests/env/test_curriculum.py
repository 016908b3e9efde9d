"""Difficulty-aware sampling: the history, the skips, refills of informative prompts, extra samples, run state."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from agilerl_selfsft.env.curriculum import Curriculum, DifficultySettings, sample_iteration, solve_rates
from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Scored, Task


def scored(prompt_id, rewards):
    return [Scored(prompt_id, [], f"c{i}", r) for i, r in enumerate(rewards)]


def test_solve_rates_count_samples_at_or_above_the_threshold():
    samples = scored(0, [1.0, 0.0, 1.0, 0.5]) + scored(1, [0.0, 0.0]) + [Scored(-1, [], "s", float("nan"), static=True)]
    assert solve_rates(samples, 1.0) == {0: 0.5, 1: 0.0}
    assert solve_rates(samples, 0.5) == {0: 0.75, 1: 0.0}


def test_mastered_prompts_are_skipped_after_the_streak_and_rechecked_at_the_recheck_rate():
    ids = list(range(10))
    c = Curriculum(ids, np.random.default_rng(0), DifficultySettings(mastered_streak=2, recheck=0.0))
    for _ in range(2):  # prompts 0-4 solved every time, twice: mastered; 5-9 half the time
        c.observe([s for i in ids for s in scored(i, [1.0, 1.0] if i < 5 else [1.0, 0.0])], 1.0)
    assert [c.status(i) for i in ids] == ["mastered"] * 5 + ["open"] * 5
    drawn = [ids[p] for p in c.draw(10)]
    assert sorted(drawn) == [5, 6, 7, 8, 9]  # one pass walked: the mastered ones skipped
    assert c.take_skipped() == {"mastered": 5, "unsolvable": 0}
    assert c.take_skipped() == {"mastered": 0, "unsolvable": 0}  # counts start again

    always = Curriculum(ids, np.random.default_rng(0), DifficultySettings(mastered_streak=2, recheck=1.0))
    always.history = copy.deepcopy(c.history)
    assert sorted(ids[p] for p in always.draw(10)) == ids  # recheck 1: every mastered prompt is re-checked

    c.observe(scored(0, [1.0, 0.0]), 1.0)  # a re-check that fails ends the streak
    assert c.status(0) == "open"


def test_never_solved_prompts_are_down_weighted_only_after_the_tries():
    ids = list(range(6))
    c = Curriculum(ids, np.random.default_rng(1), DifficultySettings(unsolved_tries=2, unsolved_weight=0.0))
    c.observe([s for i in ids for s in scored(i, [0.0, 0.0] if i < 3 else [1.0, 0.0])], 1.0)
    assert [c.status(i) for i in ids] == ["open"] * 6  # one try is not enough
    c.observe([s for i in ids for s in scored(i, [0.0, 0.0] if i < 3 else [1.0, 0.0])], 1.0)
    assert [c.status(i) for i in ids] == ["unsolvable"] * 3 + ["open"] * 3
    assert sorted(ids[p] for p in c.draw(6)) == [3, 4, 5]
    assert c.take_skipped() == {"mastered": 0, "unsolvable": 3}
    c.observe(scored(0, [1.0, 0.0]), 1.0)  # solved once: never down-weighted again
    assert c.status(0) == "open"


def test_an_iteration_is_never_empty_when_everything_is_mastered():
    c = Curriculum([0, 1, 2], np.random.default_rng(0), DifficultySettings(mastered_streak=1, recheck=0.0))
    c.observe([s for i in range(3) for s in scored(i, [1.0])], 1.0)
    assert sorted(c.draw(2)) != [] and len(c.draw(2)) == 2


def test_without_settings_the_walk_is_plain_and_nothing_is_skipped():
    c = Curriculum(list(range(5)), np.random.default_rng(0))
    c.observe([s for i in range(5) for s in scored(i, [1.0])], 1.0)
    assert [c.status(i) for i in range(5)] == ["new"] * 5
    assert sorted(c.draw(5)) == [0, 1, 2, 3, 4] and sorted(c.draw(5)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [{"mastered": 0}, {"mastered_streak": 0}, {"recheck": 1.5}, {"max_draws": 0},
                                 {"unsolved_weight": -0.1}, {"extra_samples": -1}, {"token_budget": 0}])
def test_bad_settings_name_the_setting(bad):
    with pytest.raises(SelfSFTError, match=f"sampling.{next(iter(bad))} must be"):
        DifficultySettings(**bad)


# ---- sample_iteration, on the tiny model ----
KINDS = ["easy", "hard", "half"]


def kind_reward(prompts, completions, kind, **_):
    """easy: every sample solves; hard: none; half: every other sample of a prompt (in call order)."""
    seen: dict[str, int] = {}
    out = []
    for p, k in zip(prompts, kind, strict=True):
        n = seen[str(p)] = seen.get(str(p), -1) + 1
        out.append({"easy": 1.0, "hard": 0.0, "half": float(n % 2 == 0)}[k])
    return out


def kind_tasks(kinds):
    return [Task(i, [{"role": "user", "content": f"Question {i}?"}], f"Question {i}?", {"kind": k})
            for i, k in enumerate(kinds)]


def kind_env(tokenizer, kinds, sampling=None, seed=0):
    return SelfSFTGym(kind_tasks(kinds), kind_tasks(["easy"]), tokenizer, kind_reward, sampling=sampling, seed=seed)


def test_refills_draw_fresh_prompts_until_enough_are_informative(tokenizer, make_agent):
    agent = make_agent(num_generations=2, max_new_tokens=3)
    kinds = ["easy"] * 6 + ["half"] * 6
    env = kind_env(tokenizer, kinds, {"max_draws": 5})
    first = env.sample_prompts(4)
    got, generations, stats = sample_iteration(agent, env, first, 1.0)
    ids = {s.prompt_id for s in got}
    informative = {i for i in ids if kinds[i] == "half"}
    assert len(informative) >= 4 or stats["draws"] == 5  # refilled until 4 informative (or out of draws)
    assert stats["informative_prompts"] == len(informative)
    assert stats["prompts_sampled"] == len(ids) > 4 and stats["draws"] > 1
    assert len(got) == 2 * len(ids) and sum(len(t) for t in generations.texts) == len(got)
    assert all(env.curriculum.history[i]["tries"] == 1 for i in ids)  # each prompt observed once

    plain = kind_env(tokenizer, kinds)  # no settings: one draw, the prompts given
    got, _, stats = sample_iteration(agent, plain, plain.sample_prompts(4), 1.0)
    assert stats["draws"] == 1 and len({s.prompt_id for s in got}) == 4


def test_extra_samples_go_to_informative_prompts_only_and_the_token_budget_stops_them(tokenizer, make_agent):
    agent = make_agent(num_generations=2, max_new_tokens=3)
    kinds = ["easy", "hard", "half", "half"]
    env = kind_env(tokenizer, kinds, {"max_draws": 1, "extra_samples": 3})
    got, _, stats = sample_iteration(agent, env, env.sample_prompts(4), 1.0)
    per_prompt = {i: sum(s.prompt_id == i for s in got) for i in range(4)}
    assert per_prompt == {0: 2, 1: 2, 2: 5, 3: 5} and stats["extra_samples"] == 6

    tight = kind_env(tokenizer, kinds, {"max_draws": 3, "extra_samples": 3, "token_budget": 1})
    got, _, stats = sample_iteration(agent, tight, tight.sample_prompts(4), 1.0)
    assert stats["draws"] == 1 and stats["extra_samples"] == 0 and len(got) == 8


def test_the_history_and_walk_survive_the_run_state(tokenizer, make_agent):
    agent = make_agent(num_generations=2, max_new_tokens=3)
    kinds = ["easy", "hard", "half"] * 4
    settings = {"mastered_streak": 1, "recheck": 0.0, "unsolved_tries": 1, "unsolved_weight": 0.0, "max_draws": 2}
    env = kind_env(tokenizer, kinds, settings)
    sample_iteration(agent, env, env.sample_prompts(6), 1.0)
    state = copy.deepcopy(env.state_dict())
    again = kind_env(tokenizer, kinds, settings, seed=99)
    again.load_state_dict(state)
    assert again.curriculum.history == env.curriculum.history
    assert [t.id for t in again.sample_prompts(6)] == [t.id for t in env.sample_prompts(6)]
    skipped = {i for i, k in enumerate(kinds) if k != "half" and i in env.curriculum.history}
    assert skipped and not skipped & {t.id for t in again.sample_prompts(6)}  # mastered and unsolvable: out
