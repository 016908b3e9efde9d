"""Built-in rewards, weighted reward specs, resolving names, and strict checking of returned values."""

from __future__ import annotations

import math

import pytest

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import (
    BUILTINS,
    RewardValues,
    contains,
    exact_match,
    first_number,
    resolve_reward,
    score,
)
from agilerl_selfsft.rewards import format as format_reward
from agilerl_selfsft.rewards.checks import DEFAULT_FORMAT


def _one(fn, completion, answer):
    return fn(["q"], [completion], answer=[answer])[0]


# ---- built-ins ----
@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("Paris", "Paris", 1.0),
        ("  paris.  ", "Paris", 1.0),  # trimmed, case-folded, end punctuation dropped
        ("PARIS!", "paris", 1.0),
        ("Brasilia", "Brasília", 1.0),  # accents ignored
        ("The capital is Paris", "Paris", 0.0),  # exact, not contains
        ("Pariss", "Paris", 0.0),
        ("Tirane", ["Tirana", "Tirane"], 1.0),  # a list of accepted answers
        ("Durres", ["Tirana", "Tirane"], 0.0),
    ],
)
def test_exact_match(completion, answer, expected):
    assert _one(exact_match, completion, answer) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("The capital of France is Paris.", "Paris", 1.0),
        ("It is Parisian food.", "Paris", 0.0),  # word boundaries: no match inside a word
        ("Le Paris-Saint-Germain", "Paris", 1.0),  # a hyphen is a boundary
        ("the capital is brasilia", "Brasília", 1.0),  # case- and accent-insensitive
        ("The capital is Brasília", "brasilia", 1.0),
        ("I think it is BERLIN", "Berlin", 1.0),
        ("Answer: Tirane", ["Tirana", "Tirane"], 1.0),
        ("Answer: Tiranes", ["Tirana", "Tirane"], 0.0),
        ("New  York city", "New York", 1.0),  # whitespace runs are normalised
        ("", "Paris", 0.0),
    ],
)
def test_contains(completion, answer, expected):
    assert _one(contains, completion, answer) == expected


def test_contains_escapes_regex_characters_in_answers():
    assert _one(contains, "the result is 3.5 exactly", "3.5") == 1.0
    assert _one(contains, "the result is 395 exactly", "3.5") == 0.0


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("The answer is 1,000 apples", 1000, 1.0),
        ("The answer is 1000", "1,000", 1.0),
        ("3.0", 3, 1.0),
        ("-7 degrees", -7, 1.0),
        ("It is 3, or maybe 4", 4, 0.0),  # only the first number counts
        ("It is 3, or maybe 4", 3, 1.0),
        ("no number here", 5, 0.0),
        ("42", [41, 42], 1.0),
        ("42", "not a number", 0.0),  # a non-numeric answer never matches (no crash)
    ],
)
def test_first_number(completion, answer, expected):
    assert _one(first_number, completion, answer) == expected


def test_format_needs_a_full_match_of_the_stripped_completion():
    got = format_reward(["q"] * 4, ["42", "  42\n", "42 apples", "x42"], pattern=r"\d+")
    assert got == [1.0, 1.0, 0.0, 0.0]
    # DOTALL: "." spans lines
    assert format_reward(["q"], ["<a>line 1\nline 2</a>"], pattern=r"<a>.*</a>") == [1.0]


def test_default_format_is_one_short_line():
    (reward,) = resolve_reward("format")
    got = reward.fn(["q"] * 3, ["Paris", "Paris\nand more", "x" * 81])
    assert got == [1.0, 0.0, 0.0]
    assert DEFAULT_FORMAT


def test_builtins_accept_unknown_columns():
    assert exact_match(["q"], ["Paris"], answer=["Paris"], difficulty=["easy"]) == [1.0]


# ---- resolving specs and weights ----
def test_resolve_builtin_names_and_callables():
    def mine(prompts, completions, **kwargs):
        return [0.0 for _ in completions]

    for name in ("exact_match", "contains", "first_number"):
        (r,) = resolve_reward(name)
        assert r.fn is BUILTINS[name] and r.weight == 1.0 and r.name == name
    (r,) = resolve_reward(mine)
    assert r.fn is mine and r.name == "mine"


def test_resolve_module_function_path():
    (r,) = resolve_reward("agilerl_selfsft.rewards.checks:contains")
    assert r.fn is contains


def test_resolve_format_with_pattern():
    (r,) = resolve_reward({"name": "format", "pattern": r"[A-Z][a-z]+"})
    assert r.fn(["q", "q"], ["Paris", "paris"]) == [1.0, 0.0]


def test_weighted_list_sums_weighted_rewards():
    rewards = resolve_reward([{"name": "contains", "weight": 0.5}, "exact_match", {"name": "format", "weight": 2}])
    assert [r.weight for r in rewards] == [0.5, 1.0, 2.0]
    completions = ["Paris", "The capital is Paris", "Lyon\nor Paris"]
    totals = score(rewards, ["q"] * 3, completions, {"answer": ["Paris"] * 3})
    # contains/exact/format(one line):  1/1/1 -> 3.5;  1/0/1 -> 2.5;  1/0/0 -> 0.5
    assert totals == pytest.approx([3.5, 2.5, 0.5])


def test_options_bind_keyword_arguments_and_unknown_options_are_named():
    (r,) = resolve_reward({"name": "majority_vote", "extract": "last_number", "min_agreement": 0.0})
    assert list(r.fn(["q", "q"], ["1 then 7", "7"])) == [1.0, 1.0]
    with pytest.raises(SelfSFTError, match="no option 'extractor'.*extract, min_agreement"):
        resolve_reward({"name": "majority_vote", "extractor": "boxed"})
    with pytest.raises(SelfSFTError, match="no option 'policy'"):  # handed by the loop, never set
        resolve_reward({"name": "contains", "policy": "x"})


def test_score_hands_the_policy_only_to_functions_that_take_it_and_collects_metrics():
    seen = {}

    def needs_policy(prompts, completions, policy=None, **kwargs):
        seen["policy"] = policy
        return RewardValues([0.5] * len(completions), {"my_count": 3.0})

    def plain(prompts, completions, answer):  # no **kwargs: must not get a policy keyword
        return [1.0] * len(completions)

    rewards = resolve_reward([needs_policy, plain])
    assert [r.wants_policy for r in rewards] == [True, False]
    totals = score(rewards, ["q"] * 2, ["a", "b"], {"answer": ["a", "b"]}, policy="the agent")
    assert totals == [1.5, 1.5] and totals.metrics == {"my_count": 3.0} and seen["policy"] == "the agent"


def test_resolve_unknown_name_lists_the_builtins_and_suggests_the_closest():
    with pytest.raises(SelfSFTError) as info:
        resolve_reward("exact_mach")
    message = str(info.value)
    assert "did you mean 'exact_match'" in message
    assert "exact_mach" in message
    for name in BUILTINS:
        assert name in message


def test_a_missing_module_names_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SelfSFTError) as info:
        resolve_reward("nonexistent_mod:fn", folders=[tmp_path / "configs"])
    assert str(info.value) == (
        f"reward 'nonexistent_mod:fn': no module 'nonexistent_mod' on the import path, in the config's folder or in "
        f"the working directory ({tmp_path / 'configs'}, {tmp_path}); put nonexistent_mod.py there or add its folder "
        "to PYTHONPATH")


def test_a_module_that_fails_on_import_is_told_from_a_missing_one(tmp_path, monkeypatch):
    (tmp_path / "needs_more.py").write_text("import not_installed_pkg_xyz\n\ndef fn(prompts, completions, **kw):\n"
                                            "    return [1.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SelfSFTError, match=r"module 'needs_more' does not import \(ModuleNotFoundError: No module "
                                           r"named 'not_installed_pkg_xyz'\)"):
        resolve_reward("needs_more:fn")


def test_a_module_next_to_the_config_or_in_the_cwd_is_found_without_pythonpath(tmp_path, monkeypatch):
    import sys

    configs, cwd = tmp_path / "configs", tmp_path / "cwd"
    configs.mkdir()
    cwd.mkdir()
    (configs / "my_config_reward.py").write_text("def fn(prompts, completions, **kw):\n    return [2.0] * len(completions)\n")
    (cwd / "my_cwd_reward.py").write_text("def fn(prompts, completions, **kw):\n    return [3.0] * len(completions)\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the folders appended are undone after the test
    assert score(resolve_reward("my_config_reward:fn", folders=[configs]), ["q"], ["c"], {}) == [2.0]
    assert score(resolve_reward("my_cwd_reward:fn"), ["q"], ["c"], {}) == [3.0]
    assert sys.path[-2:] == [str(configs), str(cwd)]  # after everything else: they never shadow a package


def test_resolve_module_without_the_function_suggests_the_closest():
    with pytest.raises(SelfSFTError, match="no function") as info:
        resolve_reward("json:nope")
    assert "nope" in str(info.value) and "did you mean" not in str(info.value)
    with pytest.raises(SelfSFTError) as info:
        resolve_reward("json:lods")
    assert str(info.value) == "reward 'json:lods': json has no function 'lods'; did you mean 'loads'?"


@pytest.mark.parametrize(
    "spec",
    [[], 3, {"weight": 2}, {"name": "contains", "scale": 2}, {"name": "contains", "weight": "high"},
     {"name": "contains", "weight": float("nan")}, {"name": "contains", "weight": True}],
)
def test_resolve_rejects_malformed_specs(spec):
    with pytest.raises(SelfSFTError):
        resolve_reward(spec)


# ---- strict checking of returned values ----
def _score_with(fn, n=4):
    return score(resolve_reward(fn), ["q"] * n, ["c"] * n, {"answer": ["a"] * n})


def test_score_reports_a_reward_that_raises():
    def broken_reward(prompts, completions, **kwargs):
        raise KeyError("missing column")

    with pytest.raises(SelfSFTError) as info:
        _score_with(broken_reward)
    assert "broken_reward" in str(info.value)
    assert "KeyError" in str(info.value)


def test_score_reports_wrong_length():
    def short_reward(prompts, completions, **kwargs):
        return [1.0] * (len(completions) - 1)

    with pytest.raises(SelfSFTError, match="short_reward.*3 values for 4 completions"):
        _score_with(short_reward)


def test_score_reports_nan_with_its_index():
    def nan_reward(prompts, completions, **kwargs):
        return [0.0, 1.0, math.nan, 0.0]

    with pytest.raises(SelfSFTError) as info:
        _score_with(nan_reward)
    message = str(info.value)
    assert "nan_reward" in message and "index 2" in message and "nan" in message


def test_score_reports_inf():
    def inf_reward(prompts, completions, **kwargs):
        return [0.0, float("inf"), 0.0, 0.0]

    with pytest.raises(SelfSFTError, match=r"inf_reward.*inf.*index 1"):
        _score_with(inf_reward)


def test_score_reports_a_string_value():
    def str_reward(prompts, completions, **kwargs):
        return [0.0, 0.0, 0.0, "1.0"]

    with pytest.raises(SelfSFTError, match=r"str_reward.*non-number at index 3"):
        _score_with(str_reward)


def test_score_takes_bools_ints_and_none_as_trl_does():
    def bool_reward(prompts, completions, **kwargs):
        return [True, False, 1, None]

    values = _score_with(bool_reward)
    assert list(values) == [1.0, 0.0, 1.0, None] and values.metrics["unscored"] == 1.0
    assert values.terms == {"bool_reward": [1.0, 0.0, 1.0, None]}


def test_a_none_term_is_left_out_of_the_weighted_sum_and_all_none_is_unscored():
    def first(prompts, completions, **kwargs):
        return [1.0, None, None, 0.5]

    def second(prompts, completions, **kwargs):
        return [None, 2.0, None, 1.0]

    values = score(resolve_reward([first, {"name": second, "weight": 0.5}]), ["q"] * 4, ["c"] * 4, {})
    assert list(values) == [1.0, 1.0, None, 1.0] and values.metrics == {"unscored": 1.0}
    assert values.terms == {"first": [1.0, None, None, 0.5], "second": [None, 2.0, None, 1.0]}
    assert "unscored" not in score(resolve_reward(contains), ["q"], ["Paris"], {"answer": ["Paris"]}).metrics


def test_score_reports_a_non_list():
    def none_reward(prompts, completions, **kwargs):
        return None

    with pytest.raises(SelfSFTError, match="none_reward"):
        _score_with(none_reward)


def test_score_accepts_ints_numpy_and_tuples():
    import numpy as np

    def np_reward(prompts, completions, **kwargs):
        return np.array([1, 0, 1, 0], dtype=np.float32)

    def tuple_reward(prompts, completions, **kwargs):
        return (1, 2, 3, 4)

    assert _score_with(np_reward) == [1.0, 0.0, 1.0, 0.0]
    assert _score_with(tuple_reward) == [1.0, 2.0, 3.0, 4.0]


def test_score_passes_prompts_completions_and_columns():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions, columns=columns)
        return [0.0] * len(completions)

    score(resolve_reward(spy), ["p1", "p2"], ["c1", "c2"], {"answer": ["a1", "a2"], "level": [1, 2]})
    assert seen == {"prompts": ["p1", "p2"], "completions": ["c1", "c2"],
                    "columns": {"answer": ["a1", "a2"], "level": [1, 2]}}


# ---- a reward that hangs ----
def test_a_reward_that_hangs_is_stopped_after_its_timeout_with_its_name():
    import threading
    import time

    def hangs(prompts, completions, **kw):
        time.sleep(30)
        return [1.0] * len(completions)

    def works(prompts, completions, **kw):
        return [float(threading.current_thread() is threading.main_thread())] * len(completions)

    started = time.monotonic()
    with pytest.raises(SelfSFTError, match=r"^reward function 'hangs' did not return within 0.2 s \(reward_timeout\)"):
        score(resolve_reward([works, hangs]), ["q"], ["a"], {}, timeout=0.2)
    assert time.monotonic() - started < 10  # it did not wait for the function
    assert score(resolve_reward(works), ["q"], ["a"], {}, timeout=5) == [0.0]  # in a worker thread
    assert score(resolve_reward(works), ["q"], ["a"], {}, timeout=None) == [1.0]  # no limit: in this thread

    def raises(prompts, completions, **kw):
        raise RuntimeError("checker crashed")

    with pytest.raises(SelfSFTError, match=r"^reward function 'raises' raised RuntimeError: checker crashed$"):
        score(resolve_reward(raises), ["q"], ["a"], {}, timeout=5)  # errors read the same under a timeout


@pytest.mark.parametrize(
    ("spec", "match"),
    [({"name": "majority_vote", "extract": "boxxed"}, "unknown extract 'boxxed'"),
     ({"name": "majority_vote", "min_agreement": 1.5}, "min_agreement must be between 0 and 1"),
     ({"name": "judge", "scale": [10, 1]}, "scale must be"),
     ({"name": "judge", "max_new_tokens": 0}, "max_new_tokens must be")],
)
def test_bad_options_of_a_builtin_fail_when_resolved(spec, match):
    with pytest.raises(SelfSFTError, match=match):
        resolve_reward(spec)


def test_length_penalty_is_minus_the_length_share_and_refuses_a_bad_max_chars():
    from agilerl_selfsft.rewards import length_penalty

    assert length_penalty([], ["", "abcde", "x" * 50], max_chars=10) == [0.0, -0.5, -1.0]
    reward = resolve_reward(["first_number", {"name": "length_penalty", "weight": 0.1, "max_chars": 10}])
    assert score(reward, ["q", "q"], ["4", "4 is it"], {"answer": ["4", "4"]}) == pytest.approx([0.99, 0.93])
    with pytest.raises(SelfSFTError, match="max_chars must be an integer >= 1"):
        resolve_reward({"name": "length_penalty", "max_chars": 0})


def test_answer_extractor_follows_the_reward():
    from agilerl_selfsft.rewards.registry import answer_extractor

    assert answer_extractor(resolve_reward("first_number"))("It is 1,000 or 7") == repr(1000.0)
    assert answer_extractor(resolve_reward("exact_match"))("  Paris. ") == "paris"
    assert answer_extractor(resolve_reward({"name": "majority_vote", "extract": "boxed"}))(r"so \boxed{12}") == "12.0"
    assert answer_extractor(resolve_reward(["contains", "first_number"]))("x 3") == "3.0"  # the first that says
    assert answer_extractor(resolve_reward("contains")) is None
