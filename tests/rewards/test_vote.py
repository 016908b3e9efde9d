"""majority_vote: pseudo-labels from the agreement of a prompt's samples, its extractors, and its metrics."""

from __future__ import annotations

import pytest

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import majority_vote, resolve_reward, score
from agilerl_selfsft.rewards.vote import boxed_of, canonical, final_line_of


def test_each_prompt_votes_on_its_own_samples():
    prompts = ["a"] * 4 + [[{"role": "user", "content": "b"}]] * 4  # chats group too
    completions = ["7", "It is 7.", "8", "no idea", "1,000", "1000.0", "999", "1000"]
    got = majority_vote(prompts, completions)
    assert list(got) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert got.metrics["label_agreement"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    assert got.metrics["vote_skipped"] == 0.0 and "label_accuracy" not in got.metrics  # no answer column


def test_weak_majorities_are_skipped_and_ties_go_to_the_first_answer():
    weak = majority_vote(["q"] * 4, ["1", "2", "3", "4"], min_agreement=0.5)
    assert list(weak) == [0.0] * 4 and weak.metrics["vote_skipped"] == 1.0
    tie = majority_vote(["q"] * 4, ["2", "1", "1", "2"], min_agreement=0.0)
    assert list(tie) == [1.0, 0.0, 0.0, 1.0]
    nothing = majority_vote(["q"] * 2, ["none", "here"])
    assert list(nothing) == [0.0, 0.0] and nothing.metrics["vote_skipped"] == 1.0


def test_label_accuracy_reads_the_gold_column_but_rewards_never_do():
    prompts, completions = ["a"] * 3 + ["b"] * 3, ["5", "5", "6", "2", "2", "2"]
    wrong_gold = majority_vote(prompts, completions, answer=["6"] * 3 + ["2"] * 3)
    right_gold = majority_vote(prompts, completions, answer=["5"] * 3 + ["2"] * 3)
    assert list(wrong_gold) == list(right_gold) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert wrong_gold.metrics["label_accuracy"] == 0.5 and right_gold.metrics["label_accuracy"] == 1.0
    other = majority_vote(prompts, completions, gold_column="gold", gold=["5"] * 6)
    assert other.metrics["label_accuracy"] == 0.5


def test_extractors():
    assert boxed_of(r"so \boxed{\frac{1}{2}} and then \boxed{42}") == "42"
    assert boxed_of(r"\boxed{a{b}c}") == "a{b}c" and boxed_of(r"\boxed{open") is None and boxed_of("x") is None
    assert final_line_of("work\n\nParis  \n") == "Paris" and final_line_of("  ") is None
    assert canonical(" 3.0 ") == canonical("3") and canonical("Paris.") == canonical("paris")
    got = majority_vote(["q"] * 3, ["2 or 5", "1 then 5", "5"], extract="last_number")
    assert list(got) == [1.0, 1.0, 1.0]
    lines = majority_vote(["q"] * 3, ["hmm\nParis", "Paris", "Rome"], extract="final_line")
    assert list(lines) == [1.0, 1.0, 0.0]


def test_a_user_extractor_by_path_and_bad_settings_are_named():
    got = majority_vote(["q"] * 2, ["A", "a"], extract="builtins:str")  # str(x) is an extractor of sorts
    assert list(got) == [1.0, 1.0]
    with pytest.raises(SelfSFTError, match="unknown extract 'boxxed'"):
        majority_vote(["q"], ["1"], extract="boxxed")
    with pytest.raises(SelfSFTError, match="min_agreement must be between 0 and 1"):
        majority_vote(["q"], ["1"], min_agreement=2)


def test_from_a_yaml_spec_through_score():
    rewards = resolve_reward({"name": "majority_vote", "extract": "boxed", "min_agreement": 0.6})
    totals = score(rewards, ["q"] * 3, [r"\boxed{4}", r"\boxed{4}", r"\boxed{5}"], {})
    assert totals == [1.0, 1.0, 0.0] and totals.metrics["label_agreement"] == pytest.approx(2 / 3)
