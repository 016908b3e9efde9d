"""The ``agilerl-selfsft`` command: a real run on a tiny local model, and one clear line for each bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from agilerl_selfsft.cli import main, resolved_settings
from agilerl_selfsft.config import load_config
from agilerl_selfsft.samples import Scored
from agilerl_selfsft.training.report import read_metrics

BAD_REWARDS = textwrap.dedent(
    """
    def raises(prompts, completions, **kw):
        raise RuntimeError("checker crashed")

    def short(prompts, completions, **kw):
        return [1.0] * (len(completions) - 1)

    def nan_at_1(prompts, completions, **kw):
        return [0.0, float("nan")] + [0.0] * (len(completions) - 2)

    def inf_at_0(prompts, completions, **kw):
        return [float("inf")] + [0.0] * (len(completions) - 1)

    def strings(prompts, completions, **kw):
        return ["1"] * len(completions)

    def always_one(prompts, completions, **kw):
        return [1.0] * len(completions)

    def always_zero(prompts, completions, **kw):
        return [0.0] * len(completions)

    def even_length(prompts, completions, **kw):
        return [len(c) % 2 == 0 for c in completions]

    def interrupts(prompts, completions, **kw):
        raise KeyboardInterrupt

    def two_turn_agent(task, chat):
        reply = chat(list(task.messages))
        again = chat([*task.messages, reply, {"role": "user", "content": "Sure?"}])
        return 1.0, {"turns": 2.0, "long": float(len(again["content"]) > 3)}

    def crashing_agent(task, chat):
        chat(list(task.messages))
        raise KeyError("no tool")

    def hangs_in_iteration_2(prompts, completions, **kw):
        import os, pathlib, time
        if pathlib.Path("run/checkpoints/iteration_0001").exists() and not os.environ.get("REWARD_FIXED"):
            time.sleep(60)
        return [1.0] * len(completions)

    def waits_for_release(prompts, completions, **kw):
        import os, pathlib, time
        while os.environ.get("HOLD_RUN") and not pathlib.Path("release").exists():  # only the first trainer waits
            pathlib.Path("waiting").touch()
            time.sleep(0.05)
        return [1.0] * len(completions)
    """
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_model_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model_factory(0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps({"prompt": f"What is the capital of {c}?", "answer": a}) for c, a in
                  [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")]) + "\n"
    )
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "What is the capital of Chile?", "answer": "Santiago"}) + "\n")
    (tmp_path / "badrewards.py").write_text(BAD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(workdir: Path, model: Path | str, **overrides) -> Path:
    config = {
        "model": str(model), "task": {"train": "train.jsonl", "eval": "eval.jsonl"}, "reward": "contains",
        "iterations": 1, "prompts_per_iteration": 3, "num_generations": 2, "max_new_tokens": 4,
        "batch_size": 2, "sft_epochs": 1, "eval_samples": 1, "lora": {"r": 4, "alpha": 8},
        "selection": {"strategy": "threshold", "threshold": 0.0, "keep_truncated": True},
    }
    config.update(overrides)
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("policy", ["PASSIVE", "passive", None, "ACTIVE"])
def test_the_openmp_wait_policy_is_recorded_and_passive_warned_about(workdir, tiny_model_dir, caplog, monkeypatch,
                                                                     policy):
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    with caplog.at_level(logging.INFO, logger="agilerl_selfsft"):
        resolved = resolved_settings(load_config(write_config(workdir, tiny_model_dir)))
    assert resolved["omp_wait_policy"] == policy and resolved["device"] == "cpu"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "OMP_WAIT_POLICY=PASSIVE" in r.getMessage()]
    assert len(warned) == (policy is not None and policy.upper() == "PASSIVE")


def test_train_then_eval_writes_the_run_layout(workdir, tiny_model_dir, capsys, caplog):
    config = write_config(workdir, tiny_model_dir, iterations=2, reward="badrewards:always_one")
    with caplog.at_level(logging.INFO, logger="agilerl_selfsft"):
        assert main(["train", "--config", str(config), "--output", "run"]) == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("agilerl_selfsft")]
    assert messages[0].startswith("Config (resolved):\n")  # before the model loads
    resolved = yaml.safe_load(messages[0].split("\n", 1)[1])
    assert resolved["iterations"] == 2 and resolved["selection"]["threshold"] == 0.0  # the config's values
    assert resolved["seed"] == 42 and "per_iteration" in resolved["samples"]  # and every default filled in
    # what auto became on this machine: logged, and saved in config.json beside the config (the suite pins fp32)
    assert "Device cpu, dtype float32 (auto: SELFSFT_DTYPE=float32)." in messages
    saved = json.loads((workdir / "run" / "config.json").read_text())
    assert saved["dtype"] == "auto" and saved["resolved"]["dtype"]["dtype"] == "float32"
    rows = read_metrics(workdir / "run")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert {"iteration", "eval_reward", "eval_reward_greedy", "train_reward", "kept", "wall_seconds"} <= set(row)
    assert rows[0]["train_reward"] is None and rows[1]["kept"] > 0 and rows[2]["eval_reward"] == 1.0
    for before, row in zip(rows, rows[1:]):  # where each iteration's time went: its stages, within its wall time
        stages = [row[f"seconds_{s}"] for s in ("generate", "select", "learn", "evaluate")]
        assert min(stages) >= 0 and sum(stages) <= row["wall_seconds"] - before["wall_seconds"] + 0.05
        assert row["seconds_sample"] + row["seconds_score"] == pytest.approx(row["seconds_generate"], abs=2e-3)
        assert row["seconds_learn"] > 0 and row["seconds_evaluate"] > 0
    latest = workdir / "run" / "checkpoints" / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "iteration_0002"
    assert (latest / "actor" / "adapter_model.safetensors").is_file() and (latest / "attributes.pt").is_file()
    assert (workdir / "run" / "reward_curve.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(latest), "--config", str(config)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval_reward"] == 1.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"reward": "nope"}, "unknown reward 'nope'; built-ins are: exact_match, contains, first_number, format"),
        ({"reward": "no_such_module_xyz:fn"}, "no module 'no_such_module_xyz' on the import path, in the config's folder"),
        ({"reward": "badrewards:missing"}, "badrewards has no function 'missing'"),
        ({"iterations": "many"}, "key 'iterations': Input should be a valid integer"),
        ({"lr": -1}, "key 'lr': Input should be greater than 0"),
        ({"itertions": 3}, "unknown key 'itertions'; did you mean 'iterations'?"),
        ({"num_generations": 0}, "key 'num_generations': Input should be greater than or equal to 1"),
        ({"lr": 0}, "key 'lr': Input should be greater than 0"),
        ({"population": 0}, "key 'population': Input should be greater than or equal to 1"),
        ({"selection": {"strategy": "best"}}, "key 'selection.strategy': Input should be 'threshold', 'top_k', 'top_fraction' or 'random'"),
        ({"selection": {"treshold": 1}}, "unknown key 'selection.treshold'; did you mean 'threshold'?"),
        ({"population": 2, "evolution": {"architecture": 0.2}}, "key 'evolution': LLM agents only take rl_hp mutations; set architecture=0.2 to 0"),
        ({"population": 2, "evolution": {"elitism": False}}, "key 'evolution': AgileRL's tournament needs elitism: true"),
        ({"population": 2, "evolution": {"no_mutation": 0, "rl_hp": 0}}, "no_mutation and rl_hp are both 0"),
        ({"population": 2, "evolution": {"hp": {"lr": [1e-3, 1e-5]}}}, "hp.lr must be [min, max] with 0 <= min <= max"),
        ({"population": 2, "evolution": {"hp": {"beta": [0, 1]}}}, "key 'evolution.hp.beta.[key]': Input should be 'lr', 'temperature'"),
        ({"static_data": {"path": "o.jsonl", "fraction": 1.5}}, "key 'static_data.fraction': Input should be less than or equal to 1"),
        ({"static_data": {"path": "o.jsonl", "fractoin": 0.5}}, "unknown key 'static_data.fractoin'; did you mean 'fraction'?"),
        ({"static_data": {"fraction": 0.5}}, "missing required key 'static_data.path'"),
        ({"bad_rows": "ignore"}, "key 'bad_rows': Input should be 'stop' or 'skip'"),
        ({"static_data": {"path": "nowhere.jsonl"}}, "static data not found: "),
        ({"device": "gpu"}, "key 'device': use auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"reward_timeout": 0}, "key 'reward_timeout': Input should be greater than 0"),
        ({"sampling": {"max_draw": 2}}, "unknown key 'sampling.max_draw'; did you mean 'max_draws'?"),
        ({"preset": "fast"}, "key 'preset': Input should be 'default' or 'efficient'"),
        ({"sampling": {"recheck": 2}}, "key 'sampling': sampling.recheck must be in [0, 1], got 2"),
        ({"selection": {"prefer_shorter": True}}, "prefer_shorter only changes top_k and top_fraction selection"),
        ({"reward": {"name": "length_penalty", "max_chars": 0}}, "length_penalty: max_chars must be an integer >= 1"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(workdir, tiny_model_dir, capsys, overrides, expected):
    code, line = run_cli(capsys, "train", "--config", str(write_config(workdir, tiny_model_dir, **overrides)), "--output", "run")
    assert code == 2
    assert line.startswith("error: ") and expected in line
    assert not (workdir / "run").exists()


def test_the_agent_lands_on_the_device_the_config_asks_for(workdir, tiny_model_dir):
    from agilerl_selfsft.cli import build
    from agilerl_selfsft.config import load_config

    for asked, expected in (("auto", "cuda" if torch.cuda.is_available() else "cpu"), ("cpu", "cpu")):
        pop, _ = build(load_config(write_config(workdir, tiny_model_dir, device=asked)))
        assert torch.device(pop[0].device).type == expected, asked
        assert {p.device.type for p in pop[0].actor.parameters()} == {expected}, asked


def test_the_efficiency_settings_reach_the_environment_and_the_loop(workdir, tiny_model_dir, capsys):
    path = write_config(workdir, tiny_model_dir, iterations=2, sampling={"max_draws": 3, "extra_samples": 1},
                        restart_from_base=True,
                        selection={"strategy": "top_k", "threshold": 0.0, "prefer_shorter": True, "keep_truncated": True})
    from agilerl_selfsft.cli import build
    from agilerl_selfsft.config import load_config

    _, env = build(load_config(path))
    assert (env.curriculum.settings.max_draws, env.curriculum.settings.extra_samples) == (3, 1)
    assert env.prefer_shorter and env.accumulate
    code, _ = run_cli(capsys, "train", "--config", str(path), "--output", "run")
    assert code == 0
    rows = read_metrics(workdir / "run")[1:]
    assert [r["buffer"] for r in rows] == [rows[0]["kept"], rows[0]["kept"] + rows[1]["kept"]]  # accumulated
    assert all("informative_prompts" in r and "eval_pass@1" in r for r in rows)


def test_the_reference_cache_budget_reaches_every_member_and_their_clones(workdir, tiny_model_dir):
    from agilerl_selfsft.cli import build
    from agilerl_selfsft.config import load_config

    assert load_config(write_config(workdir, tiny_model_dir)).reference_cache_mb == 1024  # the default
    pop, _ = build(load_config(write_config(workdir, tiny_model_dir, population=2, reference_cache_mb=3)))
    assert [a.reference_cache_mb for a in pop] == [3, 3]
    assert pop[0].clone(index=5).reference_cache_mb == 3  # tournament and mutation clones keep it


def test_a_bf16_policy_keeps_fp32_adapters_and_learns(workdir, tiny_model_dir):
    # bf16 applies to the base weights; the trained LoRA parameters (and so the optimizer's state) stay fp32
    from agilerl_selfsft.cli import build
    from agilerl_selfsft.config import load_config

    pop, env = build(load_config(write_config(workdir, tiny_model_dir, dtype="bfloat16")))
    agent = pop[0]
    trained = {p.dtype for p in agent.actor.parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in agent.actor.named_parameters() if not p.requires_grad and "lora" not in n}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    before = {n: p.detach().clone() for n, p in agent.actor.named_parameters() if p.requires_grad}
    tasks = env.prompts[:2]
    env.refill([Scored(t.id, [*t.messages, {"role": "assistant", "content": "Paris"}], "Paris", 1.0) for t in tasks])
    loss = agent.learn(env.reset(batch_size=agent.batch_size_per_process))["loss"]
    assert math.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in agent.actor.named_parameters() if p.requires_grad)


def test_a_preset_fills_what_the_config_leaves_out_and_the_config_wins(workdir, tiny_model_dir):
    from agilerl_selfsft.config import PRESETS, load_config

    plain = load_config(write_config(workdir, tiny_model_dir, selection={}))
    assert plain.preset == "default" and plain.selection.strategy == "threshold" and not plain.selection.prefer_shorter
    efficient = load_config(write_config(workdir, tiny_model_dir, preset="efficient", selection={}))
    assert efficient.selection.model_dump() == {**plain.selection.model_dump(), **PRESETS["efficient"]["selection"]}
    mine = load_config(write_config(workdir, tiny_model_dir, preset="efficient", selection={"top_k": 2}, lr=0.01))
    assert (mine.selection.strategy, mine.selection.top_k, mine.selection.prefer_shorter, mine.lr) == ("top_k", 2, True, 0.01)
    with_sampling = load_config(write_config(workdir, tiny_model_dir, preset="efficient", selection={},
                                             sampling={"max_draws": 3}))
    assert with_sampling.sampling.max_draws == 3 and with_sampling.selection.prefer_shorter


def test_a_cuda_device_this_machine_lacks_is_one_line_and_writes_nothing(workdir, tiny_model_dir, capsys):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: cuda:0 on a machine without CUDA
    code, line = run_cli(capsys, "train", "--config", str(write_config(workdir, tiny_model_dir, device=missing)),
                         "--output", "run")
    assert code == 2
    assert re.fullmatch(rf"error: device '{missing}'(: this machine has \d+ CUDA device\(s\)| was asked for, but CUDA "
                        r"is not available on this machine \(torch .*\); use device: auto or cpu)", line), line
    assert not (workdir / "run").exists()


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        ("badrewards:raises", "reward function 'badrewards:raises' raised RuntimeError: checker crashed"),
        ("badrewards:short", "returned 1 values for 2 completions"),
        ("badrewards:nan_at_1", "returned nan at index 1"),
        ("badrewards:inf_at_0", "returned inf at index 0"),
        ("badrewards:strings", "returned a non-number at index 0: '1'"),
    ],
)
def test_broken_reward_is_one_line_and_leaves_no_run(workdir, tiny_model_dir, capsys, reward, expected):
    config = write_config(workdir, tiny_model_dir, reward=reward, eval_samples=2)
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert code == 2 and expected in line
    assert not (workdir / "run").exists()


def test_an_agent_from_the_config_trains_on_its_conversations(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir, agent="badrewards:two_turn_agent")
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert code == 2 and line.endswith("set reward or agent, not both: an agent's return value is the reward"), line
    assert not (workdir / "run").exists()
    config = write_config(workdir, tiny_model_dir, agent="badrewards:two_turn_agent")
    text = json.loads(config.read_text())
    del text["reward"]
    config.write_text(json.dumps(text))
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    rows = read_metrics(workdir / "run")
    assert rows[0]["eval_turns"] == 2.0 and rows[1]["train_turns"] == 2.0 and "eval_long_greedy" in rows[1]
    assert rows[1]["train_reward"] == 1.0 and rows[1]["kept"] > 0 and rows[1]["learned_self"] > 0
    text["agent"] = "badrewards:crashing_agent"
    config.write_text(json.dumps(text))
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run2")
    assert code == 2 and "agent 'crashing_agent' on task 0 ('What is the capital of Chile?') raised KeyError" in line
    assert not (workdir / "run2").exists()
    text["agent"] = "badrewards:nowhere"
    config.write_text(json.dumps(text))
    assert run_cli(capsys, "train", "--config", str(config)) == (2, "error: agent 'badrewards:nowhere': badrewards has "
                                                                    "no function 'nowhere'")


def test_missing_and_empty_task_files_are_named(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir, task={"train": "nowhere.jsonl", "eval": "eval.jsonl"})
    assert run_cli(capsys, "train", "--config", str(config)) == (2, f"error: task file not found: {workdir / 'nowhere.jsonl'}")
    (workdir / "empty.jsonl").write_text("\n")
    config = write_config(workdir, tiny_model_dir, task={"train": "train.jsonl", "eval": "empty.jsonl"})
    assert run_cli(capsys, "train", "--config", str(config)) == (2, f"error: task file {workdir / 'empty.jsonl'} has no rows")
    assert not (workdir / "runs").exists()


def test_other_data_shapes_static_data_and_skipped_rows(workdir, tiny_model_dir, capsys, caplog):
    """A CSV train set, a held-out set with a broken line (skipped), and ShareGPT oracle conversations mixed in."""
    (workdir / "train.csv").write_text("prompt,answer\nWhat is the capital of France?,Paris\nWhat is the capital of Peru?,Lima\n")
    (workdir / "eval.jsonl").write_text((workdir / "eval.jsonl").read_text() + '{"prompt": "broken\n')
    turns = [{"from": "human", "value": "What is the capital of Japan?"}, {"from": "gpt", "value": "Tokyo."}]
    (workdir / "oracle.jsonl").write_text(json.dumps({"system": "Answer briefly.", "conversations": turns}) + "\n")
    static = {"path": "oracle.jsonl", "fraction": 1.0}
    config = write_config(workdir, tiny_model_dir, task={"train": "train.csv", "eval": "eval.jsonl"}, static_data=static)
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert (code, line) == (2, f"error: {workdir / 'eval.jsonl'}:2: not valid JSON (Unterminated string starting at)")
    config = write_config(workdir, tiny_model_dir, task={"train": "train.csv", "eval": "eval.jsonl"}, static_data=static,
                          bad_rows="skip")
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    assert f"{workdir / 'eval.jsonl'}:2: not valid JSON" in caplog.text
    row = read_metrics(workdir / "run")[1]
    assert (row["static"], row["learned_static"], row["learned_self"]) == (2, 2, 0)  # share 1: one per prompt
    (workdir / "oracle.jsonl").write_text(json.dumps({"conversations": turns[:1]}) + "\n")
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run2")
    assert (code, line) == (2, f"error: static data {workdir / 'oracle.jsonl'} has no usable rows: all 1 were skipped "
                               f"(first: {workdir / 'oracle.jsonl'}:1: the conversation has no assistant turn to learn from)")


def test_missing_model_path_is_named(workdir, capsys):
    config = write_config(workdir, workdir / "no-such-model")
    assert run_cli(capsys, "train", "--config", str(config)) == (2, f"error: model path does not exist: {workdir / 'no-such-model'}")


def test_command_line_exit_status_and_no_traceback(workdir, tiny_model_dir):
    config = write_config(workdir, tiny_model_dir, reward="nope")
    proc = subprocess.run(
        [sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", str(config)],
        capture_output=True, text=True, cwd=workdir, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown reward 'nope'")


def test_long_prompts_are_skipped_with_a_count_or_stop(workdir, tiny_model_dir, capsys, caplog):
    long_row = json.dumps({"prompt": "Tell me " + "very " * 80 + "much.", "answer": "x"})
    (workdir / "train.jsonl").write_text((workdir / "train.jsonl").read_text() + long_row + "\n")
    config = write_config(workdir, tiny_model_dir, max_prompt_tokens=60, iterations=0)
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    assert "Skipped prompts longer than 60 tokens: 1 train, 0 held-out." in caplog.text
    config = write_config(workdir, tiny_model_dir, max_prompt_tokens=60, long_prompts="stop")
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run2")
    assert code == 2 and "train prompt 3 has" in line and "more than the limit of 60 (long_prompts: stop)" in line


def test_nothing_selected_for_several_iterations_stops_as_configured(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir, reward="badrewards:always_zero", iterations=5, stop_after_empty=2,
                          selection={"threshold": 1.0})
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert code == 2 and "nothing passed the selection for 2 iterations in a row (iterations 1-2)" in line
    rows = read_metrics(workdir / "run")  # what finished is kept: the base evaluation and two iterations
    assert [r["iteration"] for r in rows] == [0, 1, 2] and all(r["kept"] == 0 for r in rows)
    assert os.readlink(workdir / "run" / "checkpoints" / "latest") == "iteration_0002"


def test_an_output_dir_with_another_run_is_refused_unless_resume_or_overwrite(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir)
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert code == 2 and "holds another run; resume it (--resume, resume=True) or replace it (--overwrite" in line
    changed = write_config(workdir, tiny_model_dir, lr=0.5)
    code, line = run_cli(capsys, "train", "--config", str(changed), "--output", "run", "--resume")
    assert code == 2 and "cannot resume run: lr differ from the run's config.json" in line
    saved = json.loads((workdir / "run" / "config.json").read_text())
    for key in ("static_data", "bad_rows"):  # a run from before these keys existed resumes too
        del saved[key]
    (workdir / "run" / "config.json").write_text(json.dumps(saved))
    longer = write_config(workdir, tiny_model_dir, iterations=2)  # extending a run is allowed
    assert main(["train", "--config", str(longer), "--output", "run", "--resume"]) == 0
    assert [r["iteration"] for r in read_metrics(workdir / "run")] == [0, 1, 2]
    config = write_config(workdir, tiny_model_dir)
    assert main(["train", "--config", str(config), "--output", "run", "--overwrite"]) == 0
    assert [r["iteration"] for r in read_metrics(workdir / "run")] == [0, 1]


def test_a_damaged_checkpoint_is_one_line(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir)
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    latest = workdir / "run" / "checkpoints" / "latest"
    adapter = latest / "actor" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])
    code, line = run_cli(capsys, "eval", "--checkpoint", str(latest), "--config", str(config))
    assert code == 2 and "is damaged: actor/adapter_model.safetensors does not match its manifest" in line
    code, line = run_cli(capsys, "train", "--config", str(write_config(workdir, tiny_model_dir, iterations=2)), "--output", "run", "--resume")
    assert code == 2 and "is damaged" in line


@pytest.mark.parametrize("name", ["capitals.yaml", "capital_agent.yaml", "code.yaml"])
def test_shipped_configs_load_with_their_data_and_functions(name):
    from agilerl_selfsft.cli import DEMO_CONFIG
    from agilerl_selfsft.config import load_config
    from agilerl_selfsft.data.tasks import load_tasks
    from agilerl_selfsft.rewards import import_function, resolve_reward

    config = load_config(DEMO_CONFIG.parent / name)
    sizes = (135, 40) if name == "code.yaml" else (159, 40)
    assert (len(load_tasks(config.task.train)), len(load_tasks(config.task.eval))) == sizes
    if name == "code.yaml":
        assert [r.name for r in resolve_reward(config.reward)] == ["python_tests"]
        assert all(t.columns["tests"] for t in load_tasks(config.task.train))
    elif config.agent is not None:
        assert import_function(config.agent, "agent").__name__ == "capital_agent"
    else:
        assert [r.name for r in resolve_reward(config.reward)] == ["contains"]


def test_a_reward_that_hangs_ends_the_run_and_the_last_checkpoint_resumes(workdir, tiny_model_dir, capsys, caplog,
                                                                         monkeypatch):
    from agilerl_selfsft.cli import build
    from agilerl_selfsft.config import load_config
    from agilerl_selfsft.training.checkpoints import verify_checkpoint

    assert build(load_config(write_config(workdir, tiny_model_dir, reward_timeout=None)))[1].reward_timeout is None
    assert load_config(write_config(workdir, tiny_model_dir)).reward_timeout == 300  # the default
    config = write_config(workdir, tiny_model_dir, iterations=2, reward="badrewards:hangs_in_iteration_2",
                          reward_timeout=1.5)
    assert build(load_config(config))[1].reward_timeout == 1.5  # the YAML key reaches the environment
    monkeypatch.delenv("REWARD_FIXED", raising=False)
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert (code, line) == (2, "error: reward function 'badrewards:hangs_in_iteration_2' did not return within 1.5 s "
                               "(reward_timeout); make it faster or raise reward_timeout, then resume")
    latest = workdir / "run" / "checkpoints" / "latest"
    assert os.readlink(latest) == "iteration_0001" and verify_checkpoint(latest)["iteration"] == 1  # intact
    assert [r["iteration"] for r in read_metrics(workdir / "run")] == [0, 1]
    monkeypatch.setenv("REWARD_FIXED", "1")  # the reward works now; a longer limit may come with the resume
    longer = write_config(workdir, tiny_model_dir, iterations=2, reward="badrewards:hangs_in_iteration_2",
                          reward_timeout=60)
    caplog.set_level("INFO", logger="agilerl_selfsft")
    assert main(["train", "--config", str(longer), "--output", "run", "--resume"]) == 0
    assert "Resuming after iteration 1 from" in caplog.text
    assert [r["iteration"] for r in read_metrics(workdir / "run")] == [0, 1, 2]
    assert os.readlink(latest) == "iteration_0002"


def test_overwrite_deletes_only_a_run_of_ours_and_names_anything_else(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir)
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    run = workdir / "run"
    (run / "notes.txt").write_text("my notes")
    (run / "checkpoints" / "keep.bin").write_bytes(b"mine")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run", "--overwrite")
    assert (code, line) == (2, f"error: --overwrite deletes only a run of ours, and {Path('run')} also holds "
                               "notes.txt, checkpoints/keep.bin; move those away or choose another --output")
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # nothing deleted
    (run / "notes.txt").unlink()
    (run / "checkpoints" / "keep.bin").unlink()
    assert main(["train", "--config", str(config), "--output", "run", "--overwrite"]) == 0  # all of it ours: replaced
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1]

    other = workdir / "results"  # a folder that merely looks like a run: its metrics.jsonl is someone else's
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"accuracy": 0.9}\n')
    (other / "table.csv").write_text("a,b\n")
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "results", "--overwrite")
    assert (code, line) == (2, f"error: overwrite deletes only a run of agilerl-selfsft, and {Path('results')} holds no "
                               "run (or a config.json that is not a run's); delete the folder yourself or choose another "
                               "output")
    assert sorted(p.name for p in other.iterdir()) == ["metrics.jsonl", "table.csv"]


def test_a_second_trainer_on_the_same_output_is_refused_naming_the_first(workdir, tiny_model_dir, capsys):
    import signal
    import time

    config = write_config(workdir, tiny_model_dir, reward="badrewards:waits_for_release")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HOLD_RUN": "1"}
    first = subprocess.Popen([sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", str(config),
                              "--output", "run"], cwd=workdir, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "waiting").exists():  # the first trainer is scoring: it holds the run
            assert first.poll() is None and time.monotonic() < deadline, "the first trainer did not start"
            time.sleep(0.2)
        for flags in (["--resume"], ["--overwrite"]):
            code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run", *flags)
            assert (code, line) == (2, f"error: run directory {Path('run')} is in use by another trainer (PID "
                                       f"{first.pid}); wait for it to end, or stop it, before starting or resuming "
                                       "a run there"), flags
        assert (workdir / "run" / "config.json").is_file()  # --overwrite deleted nothing
    finally:
        first.send_signal(signal.SIGKILL)  # killed: the kernel drops its lock, the file stays
        first.wait(timeout=60)
    assert (workdir / "run" / ".selfsft.lock").read_text().strip() == str(first.pid)
    assert main(["train", "--config", str(config), "--output", "run", "--resume"]) == 0
    assert [r["iteration"] for r in read_metrics(workdir / "run")] == [0, 1]


def test_eval_prints_what_metrics_jsonl_recorded_for_each_checkpoint(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir, iterations=2, reward="badrewards:even_length", eval_samples=3,
                          temperature=1.0, selection={"threshold": 1.0, "keep_truncated": True})
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    rows = read_metrics(workdir / "run")
    for iteration in (1, 2):
        capsys.readouterr()
        checkpoint = workdir / "run" / "checkpoints" / f"iteration_{iteration:04d}"
        assert main(["eval", "--checkpoint", str(checkpoint), "--config", str(config)]) == 0
        out = capsys.readouterr()
        result = json.loads(out.out)
        for key in ("eval_reward", "eval_reward_greedy", "eval_pass@3", "eval_pass@1", "eval_tokens"):
            assert result[key] == rows[iteration][key], (iteration, key)
        assert ("eval_reward: the mean reward of 3 sample(s) per held-out prompt (1 prompts) at temperature 1, seed 42;"
                " eval_reward_greedy: one greedy answer per prompt (what metrics.jsonl records") in out.err


def test_a_copied_config_resumes_when_its_task_files_hold_the_same_data(workdir, tiny_model_dir, capsys):
    import shutil

    config = write_config(workdir, tiny_model_dir)
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    assert set(json.loads((workdir / "run" / "task_files.json").read_text())) == {"task.train", "task.eval"}
    copy = workdir / "copy"
    copy.mkdir()
    for name in ("train.jsonl", "eval.jsonl"):
        shutil.copy(workdir / name, copy / name)
    text = json.loads(config.read_text())
    (copy / "config.yaml").write_text(json.dumps({**text, "iterations": 2}))  # its paths now resolve in copy/
    assert main(["train", "--config", str(copy / "config.yaml"), "--output", "run", "--resume"]) == 0
    assert [r["iteration"] for r in read_metrics(workdir / "run")] == [0, 1, 2]
    (copy / "train.jsonl").write_text((copy / "train.jsonl").read_text().replace("Lima", "Cusco"))
    (copy / "config.yaml").write_text(json.dumps({**text, "iterations": 3, "lr": 0.5}))
    code, line = run_cli(capsys, "train", "--config", str(copy / "config.yaml"), "--output", "run", "--resume")
    assert (code, line) == (2, "error: cannot resume run: lr, task.train (content) differ from the run's config.json")


def test_resume_of_a_folder_that_does_not_exist_is_refused(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir)
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "runn", "--resume")
    assert (code, line) == (2, f"error: cannot resume {Path('runn')}: it does not exist; check the path, or start a "
                               "new run there without resume")
    assert not (workdir / "runn").exists()


def test_ctrl_c_before_the_first_iteration_leaves_nothing_and_a_rerun_starts(workdir, tiny_model_dir, capsys):
    config = write_config(workdir, tiny_model_dir, reward="badrewards:interrupts")
    code, line = run_cli(capsys, "train", "--config", str(config), "--output", "run")
    assert (code, line) == (130, "interrupted: no iteration was complete, so nothing was kept")
    assert not (workdir / "run").exists()
    assert main(["train", "--config", str(write_config(workdir, tiny_model_dir)), "--output", "run"]) == 0


def test_a_reward_module_next_to_the_config_needs_no_pythonpath(workdir, tiny_model_dir, tmp_path, monkeypatch):
    folder = workdir / "task"
    folder.mkdir()
    (folder / "my_task_reward.py").write_text("def first_word(prompts, completions, **kw):\n"
                                              "    return [float(bool(c.split())) for c in completions]\n")
    for name in ("train.jsonl", "eval.jsonl"):
        (folder / name).write_text((workdir / name).read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = folder / "config.yaml"
    text = json.loads(write_config(workdir, tiny_model_dir, iterations=0).read_text())
    config.write_text(json.dumps({**text, "reward": "my_task_reward:first_word"}))
    assert main(["train", "--config", str(config), "--output", "run"]) == 0
    assert read_metrics(elsewhere / "run")[0]["eval_reward"] is not None


def test_help_and_version_import_nothing_heavy():
    probe = ("import sys\nfrom agilerl_selfsft.cli import main\n"
             "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'agilerl.algorithms', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"agilerl-selfsft {__import__('agilerl_selfsft').__version__}", "[]"]
    helped = subprocess.run([sys.executable, "-m", "agilerl_selfsft.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "Self-train a language model on its own best samples" in helped.stdout
    assert "``" not in helped.stdout  # plain text, no reST markup
