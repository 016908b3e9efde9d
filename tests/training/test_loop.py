"""The self-training loop end to end on the tiny model: metrics, checkpoints, empty selections, evolution."""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
from agilerl.algorithms.core.registry import HyperparameterConfig, RLParameter
from agilerl.hpo.mutation import Mutations
from agilerl.hpo.tournament import TournamentSelection

from agilerl_selfsft import SelfSFTError, SelfSFTGym, Task, evaluate, finetune_llm_selfsft

ROW_KEYS = {"iteration", "eval_reward", "eval_reward_greedy", "train_reward", "kept", "wall_seconds"}


def even_length(prompts, completions, **kwargs):
    """1.0 for completions of even length: the random tiny model hits it about half the time."""
    return [float(len(c) % 2 == 0) for c in completions]


def never(prompts, completions, **kwargs):
    return [0.0] * len(completions)


def tasks(words, start=0):
    return [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {"answer": w})
            for i, w in enumerate(words, start=start)]


def make_env(tokenizer, reward):
    # the tiny random model never ends a turn on its own: keep its truncated samples
    return SelfSFTGym(tasks(["one", "two", "three", "four", "five"]), tasks(["six", "seven"]), tokenizer, reward,
                      data_batch_size_per_gpu=4, keep_truncated=True)


def read_metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_two_iterations_write_metrics_and_checkpoints(tiny_agent, tokenizer, tmp_path):
    env = make_env(tokenizer, even_length)
    pop, history = finetune_llm_selfsft(
        [tiny_agent], env, iterations=2, prompts_per_iteration=4, sft_epochs=1, eval_samples=2,
        checkpoint_path=tmp_path, verbose=False,
    )
    assert pop == [tiny_agent]
    rows = read_metrics(tmp_path)
    assert rows == json.loads(json.dumps(history))  # what is returned is what is written
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert 0.0 <= r["eval_reward"] <= 1.0
        assert r["eval_reward_greedy"] in (0.0, 0.5, 1.0)  # 2 held-out prompts, one greedy sample each
        assert r["wall_seconds"] >= 0
    assert rows[0]["train_reward"] is None and rows[0]["kept"] == 0
    assert [r["wall_seconds"] for r in rows] == sorted(r["wall_seconds"] for r in rows)
    for r in rows[1:]:
        assert 0.0 <= r["train_reward"] <= 1.0
        # 4 prompts x K=2 samples, minus duplicates; the threshold keeps the even-length ones
        assert r["kept"] <= 8
        if r["kept"]:
            assert r["loss"] is not None and math.isfinite(r["loss"]) and r["learn_steps"] >= 1
        else:
            assert r["loss"] is None
        assert r["gen_tokens"] > 0
    # a fitness per evaluation: the base policy and each iteration
    assert len(tiny_agent.fitness) == 3
    latest = tmp_path / "checkpoints" / "latest"
    assert latest.is_symlink()
    assert (latest / "actor" / "adapter_model.safetensors").is_file()
    assert json.loads((latest / "selfsft.json").read_text())["iteration"] == 2


def test_nothing_selected_skips_training(tiny_agent, tokenizer, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agilerl_selfsft")
    env = make_env(tokenizer, never)
    pop, history = finetune_llm_selfsft(
        [tiny_agent], env, iterations=2, prompts_per_iteration=4, sft_epochs=1, eval_samples=2,
        checkpoint_path=tmp_path, verbose=True,
    )
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["kept"] == 0 and r["buffer"] == 0
        assert r["loss"] is None and r["kl"] is None and r["learn_steps"] == 0
        assert r["train_reward"] == 0.0 and r["eval_reward"] == 0.0
    skipped = [m for m in caplog.messages if "skipping training" in m]
    assert len(skipped) == 2  # one per iteration
    assert json.loads((tmp_path / "checkpoints" / "latest" / "selfsft.json").read_text())["iteration"] == 2


def test_a_loop_that_raises_finishes_its_wandb_run_and_keeps_its_rows(tiny_agent, tokenizer, tmp_path):
    """A run stopped by an error is not left open in wandb (the next ``wandb.init`` would join it), and what it
    did before the error is on disk: the rows and the checkpoint of the iteration that finished."""
    import wandb

    run = tmp_path / "run"
    with pytest.raises(SelfSFTError, match="nothing passed the selection for 1 iterations"):
        finetune_llm_selfsft([tiny_agent], make_env(tokenizer, never), iterations=3, prompts_per_iteration=2,
                             eval_samples=1, checkpoint_path=run, verbose=False, stop_after_empty=1, wb=True,
                             wandb_config={"mode": "offline", "dir": str(tmp_path), "name": "raises"})
    assert wandb.run is None  # finished, not left running
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1]
    assert json.loads((run / "checkpoints" / "latest" / "selfsft.json").read_text())["iteration"] == 1


def test_without_a_run_dir_nothing_is_written(tiny_agent, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env(tokenizer, even_length)
    _, history = finetune_llm_selfsft([tiny_agent], env, iterations=1, prompts_per_iteration=2, sft_epochs=1,
                                      eval_samples=1, eval_greedy=False, verbose=False)
    assert [r["iteration"] for r in history] == [0, 1]
    assert history[1]["eval_reward_greedy"] is None  # NaN is recorded as None
    assert list(tmp_path.iterdir()) == []


def test_population_of_two_evolves(make_agent, tokenizer, tmp_path):
    """Two agents, AgileRL tournament selection and rl_hp (lr) mutations between the two iterations."""
    hp_config = HyperparameterConfig(lr=RLParameter(min=1e-4, max=1e-2))
    first = make_agent(hp_config=hp_config)
    pop = [first, first.clone(index=1)]
    first_indices = {0, 1}  # (AgileRL's tournament empties the slots of the list it is given)
    env = make_env(tokenizer, even_length)
    tournament = TournamentSelection(tournament_size=2, elitism=True, population_size=2)
    mutation = Mutations(no_mutation=0.5, architecture=0, new_layer_prob=0, parameters=0, activation=0, rl_hp=0.5,
                         rand_seed=1)
    new_pop, history = finetune_llm_selfsft(
        pop, env, iterations=2, prompts_per_iteration=4, sft_epochs=1, eval_samples=2,
        tournament=tournament, mutation=mutation, checkpoint_path=tmp_path, verbose=False,
    )
    assert len(new_pop) == 2
    assert all(agent.tokenizer is tokenizer for agent in new_pop)
    for agent in new_pop:
        assert agent.fitness and all(math.isfinite(f) for f in agent.fitness)
        # an lr mutation (if any) reached the optimizer; the tournament gave new members new indices
        assert agent.optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(agent.lr)
        assert 1e-4 <= agent.lr <= 1e-2
    assert len({agent.index for agent in new_pop}) == 2
    assert [r["iteration"] for r in history] == [0, 1, 2]
    for row in history[1:]:
        assert len(row["population"]) == 2
        expected = first_indices if row["iteration"] == 1 else {a.index for a in new_pop}
        assert {m["agent"] for m in row["population"]} == expected
        assert row["eval_reward"] == max(m["eval_reward"] for m in row["population"])


def test_evaluate_scores_held_out_prompts_only(tiny_agent, tokenizer):
    seen = []

    def one_word_answer(prompts, completions, answer, **kwargs):
        seen.append(list(prompts))
        return [1.0 if i % 2 == 0 else 0.0 for i in range(len(completions))]

    env = make_env(tokenizer, one_word_answer)
    result = evaluate(tiny_agent, env, num_samples=3, greedy=True)
    held_out = [t.prompt for t in env.eval_tasks]
    # sampled: 3 per held-out prompt, then one greedy each; never a train prompt
    assert seen == [[p for p in held_out for _ in range(3)], held_out]
    assert result["eval_reward"] == pytest.approx(3 / 6)  # rewards 1,0,1,0,1,0
    assert result["eval_reward_greedy"] == pytest.approx(0.5)  # 1,0
    assert result["eval_solved"] == 1.0  # both prompts have a sample at the threshold
    assert result["eval_tokens"] > 0 and result["eval_seconds"] > 0
    assert not env.evaluation_mode
    no_greedy = evaluate(tiny_agent, env, num_samples=1, greedy=False)
    assert math.isnan(no_greedy["eval_reward_greedy"])


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"pop": 0}, "the population is empty"),
        ({"mutation": {"architecture": 0.3}}, "LLM agents only take rl_hp mutations: set architecture=0 (got 0.3) in Mutations"),
        ({"mutation": {"parameters": 0.1, "activation": 0.1}}, "set parameters=0 (got 0.1), activation=0 (got 0.1)"),
        ({"elitism": False}, "TournamentSelection(elitism=False) is not supported"),
        ({"tournament_size": 3}, "population_size=3 but the population has 2 agents"),
        ({"no_hp": True}, "Mutations(rl_hp>0) needs an hp_config"),
        ({"only_tournament": True}, "evolution needs both tournament and mutation"),
    ],
)
def test_bad_evolution_setups_fail_before_any_work(make_agent, tokenizer, tmp_path, setup, expected):
    hp_config = None if setup.get("no_hp") else HyperparameterConfig(lr=RLParameter(min=1e-4, max=1e-2))
    first = make_agent(hp_config=hp_config)
    pop = [first, first.clone(index=1)][: setup.get("pop", 2)]
    probs = dict(no_mutation=0.5, architecture=0, new_layer_prob=0, parameters=0, activation=0, rl_hp=0.5)
    probs.update(setup.get("mutation", {}))
    tournament = TournamentSelection(tournament_size=2, elitism=setup.get("elitism", True), population_size=setup.get("tournament_size", 2))
    mutation = None if setup.get("only_tournament") else Mutations(**probs, rand_seed=1)
    with pytest.raises(SelfSFTError, match=re.escape(expected)):
        finetune_llm_selfsft(pop, make_env(tokenizer, even_length), iterations=1, tournament=tournament,
                             mutation=mutation, checkpoint_path=tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()


def test_population_members_train_on_their_own_samples(make_agent, tokenizer):
    """Members with different K and batch size: own sample counts, own learning steps, own replay."""
    first = make_agent()
    pop = [first, first.clone(index=1)]
    pop[1].num_generations, pop[1].batch_size = 3, 1
    pop[1].mutation_hook()
    env = SelfSFTGym(tasks(["one", "two", "three", "four"]), tasks(["six"]), tokenizer, even_length,
                     data_batch_size_per_gpu=4, keep_truncated=True, replay_capacity=50, selection="top_k", top_k=1, threshold=0.0)
    _, history = finetune_llm_selfsft(pop, env, iterations=1, prompts_per_iteration=4, sft_epochs=1, eval_samples=1, verbose=False)
    a, b = history[1]["population"]
    assert (a["gen_tokens"], b["gen_tokens"]) == (4 * 2 * 8, 4 * 3 * 8)  # K samples of max_new_tokens each
    assert a["kept"] == b["kept"] == 4.0  # top_k=1: one per prompt, from each member's own samples
    assert (a["learn_steps"], b["learn_steps"]) == (1, 4)  # batch 4 vs batch 1 over 4 samples
    assert sorted(env.replays) == [0, 1]
    own = {m: {s.completion for s in env.replays[m].samples} for m in (0, 1)}
    assert own[0] != own[1] and len(own[0]) == len(own[1]) == 4


def always(prompts, completions, **kwargs):
    return [1.0] * len(completions)


# Oracle-style multi-turn trajectories: two replies each, the last one names the trajectory.
ORACLE = [[{"role": "system", "content": "Act."}, {"role": "user", "content": f"Task {i}."},
           {"role": "assistant", "content": "look"}, {"role": "user", "content": "You see a mug."},
           {"role": "assistant", "content": f"Oracle done {i}."}] for i in range(3)]


def test_static_data_mix_is_what_is_learned(make_agent, tokenizer, tmp_path):
    """Static share 1.0 → 0.0 over two iterations: the batches learned hold static and own samples in that share."""
    agent = make_agent()
    learned_batches = {}  # iteration -> (static rows, self rows) seen by agent.learn
    real_learn = agent.learn

    def learn_and_count(batch, *args, **kwargs):  # the real learn, counting the rows it gets
        static = sum(r.startswith("Oracle done") for r in batch["response"])
        counts = learned_batches.setdefault(len(agent.fitness), [0, 0])  # one fitness per evaluation so far
        counts[0] += static
        counts[1] += len(batch["response"]) - static
        # every assistant turn of a static row is learned, never its system or user turns
        for row, response in enumerate(batch["response"]):
            if response.startswith("Oracle done"):
                learned = tokenizer.decode(batch["input_ids"][row][batch["loss_mask"][row].bool()])
                assert "look" in learned and response in learned and "mug" not in learned and "Act." not in learned
        return real_learn(batch, *args, **kwargs)

    agent.learn = learn_and_count
    env = SelfSFTGym(tasks(["one", "two", "three", "four"]), tasks(["six"]), tokenizer, always,
                     data_batch_size_per_gpu=4, keep_truncated=True, static_data=ORACLE, static_fraction=1.0,
                     static_final_fraction=0.0, static_decay_iterations=2)
    _, history = finetune_llm_selfsft([agent], env, iterations=3, prompts_per_iteration=4, sft_epochs=2,
                                      eval_samples=1, eval_greedy=False, checkpoint_path=tmp_path, verbose=False)
    rows = history[1:]
    assert [r["static_fraction"] for r in rows] == [1.0, 0.5, 0.0]
    for r in rows:  # what the metrics report is what learn got
        assert [r["learned_static"], r["learned_self"]] == learned_batches[r["iteration"]]
        assert r["learned_static"] + r["learned_self"] == 2 * r["buffer"]  # two passes over the buffer
    first, second, third = rows
    assert first["kept"] >= 4 and (first["learned_static"], first["learned_self"]) == (2 * 4, 0)  # one per prompt
    assert second["learned_static"] == second["learned_self"] == 2 * second["kept"] > 0  # half and half
    assert third["learned_static"] == 0 and third["learned_self"] == 2 * third["kept"]
    assert read_metrics(tmp_path)[1]["learned_static"] == 8


def test_static_data_trains_when_nothing_is_selected(tiny_agent, tokenizer, tmp_path):
    """A warm start: nothing passes the selection, the static floor is learned, and the empty streak still counts."""
    env = SelfSFTGym(tasks(["one", "two", "three", "four"]), tasks(["six"]), tokenizer, never,
                     data_batch_size_per_gpu=4, static_data=ORACLE, static_fraction=0.5)
    with pytest.raises(SelfSFTError, match="nothing passed the selection for 1 iterations"):
        finetune_llm_selfsft([tiny_agent], env, iterations=2, prompts_per_iteration=4, sft_epochs=1, eval_samples=1,
                             eval_greedy=False, checkpoint_path=tmp_path, verbose=False, stop_after_empty=1)
    row = read_metrics(tmp_path)[1]
    assert (row["kept"], row["static"], row["learned_static"], row["learned_self"]) == (0, 2, 2, 0)  # 0.5 x 4 prompts
    assert row["loss"] is not None and math.isfinite(row["loss"])


def test_a_resumed_run_draws_the_same_static_conversations(make_agent, tokenizer, tmp_path):
    """The static order is part of the run state: stopping after iteration 1 and resuming changes nothing."""

    def run(out, iterations, resume=False):
        agent = make_agent()
        drawn = []
        real_learn = agent.learn

        def learn_and_record(batch, *args, **kwargs):
            drawn.extend(r for r in batch["response"] if r.startswith("Oracle done"))
            return real_learn(batch, *args, **kwargs)

        agent.learn = learn_and_record
        env = SelfSFTGym(tasks(["one", "two", "three"]), tasks(["six"]), tokenizer, never, data_batch_size_per_gpu=1,
                         static_data=ORACLE, static_fraction=1.0)
        _, history = finetune_llm_selfsft([agent], env, iterations=iterations, prompts_per_iteration=2, sft_epochs=1,
                                          eval_samples=1, eval_greedy=False, checkpoint_path=out, resume=resume,
                                          verbose=False)
        return drawn, [(r["learned_static"], r["loss"]) for r in history[1:]]

    whole, whole_rows = run(tmp_path / "whole", 2)
    first, _ = run(tmp_path / "split", 1)
    rest, rows = run(tmp_path / "split", 2, resume=True)
    assert first + rest == whole and len(whole) == 4  # 2 prompts x share 1.0, twice: one pass of 3, then more
    assert rows == whole_rows  # (the resumed history starts with the rows of the first run)


def test_resume_follows_latest_only_into_the_runs_own_checkpoints(make_agent, tokenizer, tmp_path):
    import os

    other = tmp_path / "other-run"  # a complete, valid run somewhere else
    finetune_llm_selfsft([make_agent()], make_env(tokenizer, even_length), iterations=1, prompts_per_iteration=2,
                         eval_samples=1, checkpoint_path=other, verbose=False)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for target in (other / "checkpoints" / "iteration_0001", "../../other-run/checkpoints/iteration_0001"):
        latest = run / "checkpoints" / "latest"
        if latest.is_symlink():
            latest.unlink()
        latest.symlink_to(target, target_is_directory=True)
        with pytest.raises(SelfSFTError, match=r"cannot resume from .*run: checkpoints/latest leads to "
                                               r".*other-run/checkpoints/iteration_0001, not to an iteration_NNNN "
                                               r"folder of this run's checkpoints/"):
            finetune_llm_selfsft([make_agent()], make_env(tokenizer, even_length), iterations=2,
                                 prompts_per_iteration=2, eval_samples=1, checkpoint_path=run, verbose=False,
                                 resume=True)
    os.replace(other / "checkpoints" / "iteration_0001", run / "checkpoints" / "iteration_0001")
    latest.unlink()
    latest.symlink_to("iteration_0001", target_is_directory=True)  # the run's own: resumed
    (run / "metrics.jsonl").write_text((other / "metrics.jsonl").read_text())
    _, history = finetune_llm_selfsft([make_agent()], make_env(tokenizer, even_length), iterations=2,
                                      prompts_per_iteration=2, eval_samples=1, checkpoint_path=run, verbose=False,
                                      resume=True)
    assert [r["iteration"] for r in history] == [0, 1, 2]


def test_majority_vote_trains_and_a_real_reward_evaluates(tiny_agent, tokenizer, tmp_path):
    """The YAML pairing for tasks without train labels: majority_vote on the train split, a checker held out;
    the vote's own counts reach the metrics as train_*, the eval reward's none."""
    env = SelfSFTGym(tasks(["one", "two", "three"]), tasks(["six", "seven"]), tokenizer,
                     {"name": "majority_vote", "extract": "final_line", "min_agreement": 0.0},
                     data_batch_size_per_gpu=4, keep_truncated=True, eval_reward="contains")
    _, history = finetune_llm_selfsft([tiny_agent], env, iterations=1, prompts_per_iteration=3, sft_epochs=1,
                                      eval_samples=2, checkpoint_path=tmp_path, verbose=False)
    row = history[1]
    assert 0.0 < row["train_label_agreement"] <= 1.0 and row["train_vote_skipped"] == 0.0
    assert row["train_label_accuracy"] >= 0.0  # the train rows have answers: measured, never rewarded
    assert row["train_reward"] > 0  # every prompt's majority scores 1 for its members
    assert not any(k.startswith("eval_label") for k in row)  # held out: contains, which counts nothing


def test_python_tests_scores_the_shipped_code_task_in_the_loop(tiny_agent, tokenizer, tmp_path):
    """python_tests as the train and eval reward of the shipped code task: every sandboxed program of an
    iteration is counted once under its outcome (the tiny model writes no valid code: syntax errors, reward 0),
    and an iteration where nothing passes is logged, not fatal."""
    from agilerl_selfsft import load_tasks
    from agilerl_selfsft.data.tasks import CODE_DIR
    from agilerl_selfsft.rewards.sandbox import OUTCOMES

    train, held_out = load_tasks(CODE_DIR / "train.jsonl")[:3], load_tasks(CODE_DIR / "eval.jsonl")[:2]
    env = SelfSFTGym(train, held_out, tokenizer, {"name": "python_tests", "timeout": 5}, data_batch_size_per_gpu=4,
                     keep_truncated=True)
    _, history = finetune_llm_selfsft([tiny_agent], env, iterations=1, prompts_per_iteration=3, sft_epochs=1,
                                      eval_samples=2, checkpoint_path=tmp_path, verbose=False)
    row = history[1]
    assert sum(row[f"train_code_{o}"] for o in OUTCOMES) == 3 * tiny_agent.num_generations
    assert sum(row[f"eval_code_{o}"] for o in OUTCOMES) > 0
    assert row["train_reward"] == 0.0 and row["eval_reward"] == 0.0


def test_restart_from_base_learns_everything_selected_so_far_from_fresh_adapters(tiny_agent, tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="agilerl_selfsft")
    env = make_env(tokenizer, always)
    _, history = finetune_llm_selfsft([tiny_agent], env, iterations=3, prompts_per_iteration=2, sft_epochs=1,
                                      eval_samples=1, eval_greedy=False, verbose=True, restart_from_base=True)
    rows = history[1:]
    assert all(r["kept"] > 0 for r in rows)
    assert [r["buffer"] for r in rows] == [sum(x["kept"] for x in rows[: i + 1]) for i in range(3)]
    assert [r["replayed"] for r in rows] == [0] + [sum(x["kept"] for x in rows[:i]) for i in range(1, 3)]
    assert len(re.findall(r"Restarting from the base: \d+ LoRA layers", caplog.text)) == 3


def test_difficulty_sampling_is_logged_per_iteration(tiny_agent, tokenizer):
    env = SelfSFTGym(tasks(["one", "two", "three", "four"]), tasks(["six"]), tokenizer, always,
                     data_batch_size_per_gpu=4, keep_truncated=True,
                     sampling={"mastered_streak": 1, "recheck": 0.0, "max_draws": 1})
    _, history = finetune_llm_selfsft([tiny_agent], env, iterations=3, prompts_per_iteration=2, sft_epochs=1,
                                      eval_samples=2, eval_greedy=False, verbose=False)
    rows = history[1:]
    # every sample solves its prompt: mastered once sampled; the first pass (2 iterations) meets none, the
    # second only mastered ones: all 4 walked and skipped, then sampled anyway (an iteration is never empty)
    assert [r["prompts_skipped_mastered"] for r in rows] == [0, 0, 4] and rows[2]["prompts_sampled"] == 2
    assert all(r["informative_prompts"] == 0 and r["draws"] == 1 for r in rows)
    assert all(r["gen_tokens_per_kept"] == pytest.approx(r["gen_tokens"] / r["kept"]) for r in rows)
    assert {"eval_pass@1", "eval_pass@2", "eval_completion_tokens"} <= set(history[0])
