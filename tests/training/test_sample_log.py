"""What the model wrote: the samples files of a run, the best and worst in the log, wandb's table, TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from agilerl_selfsft import SelfSFTGym, Task, finetune_llm_selfsft
from agilerl_selfsft.training.sample_log import write_samples

ROW_KEYS = {"iteration", "agent", "prompt_id", "prompt", "completion", "reward", "terms", "kept", "replayed",
            "finish_reason"}


def even_length(prompts, completions, **kwargs):
    return [len(c) % 2 == 0 for c in completions]  # bools, as TRL rewards may return


def tasks(words, start=0):
    return [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {"answer": w})
            for i, w in enumerate(words, start=start)]


WORDS = ["one", "two", "three", "four"]


def make_env(tokenizer, **kwargs):
    return SelfSFTGym(tasks(WORDS), tasks(["six", "seven"]), tokenizer, even_length,
                      data_batch_size_per_gpu=4, keep_truncated=True, **kwargs)


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory, tiny_model_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model_factory(0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_sample_of_an_iteration_is_written_with_its_reward_terms_and_flags(make_agent, tokenizer, tmp_path, caplog):
    caplog.set_level("INFO", logger="agilerl_selfsft")
    env = make_env(tokenizer, replay_capacity=64, replay_ratio=1.0)
    _, history = finetune_llm_selfsft([make_agent()], env, iterations=2, prompts_per_iteration=4, sft_epochs=1,
                                      eval_samples=1, checkpoint_path=tmp_path, log_examples=1)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["iteration_0001.jsonl", "iteration_0002.jsonl"]
    for iteration in (1, 2):
        rows = read_rows(tmp_path / "samples" / f"iteration_{iteration:04d}.jsonl")
        own = [r for r in rows if not r["replayed"]]
        assert all(set(r) == ROW_KEYS and r["iteration"] == iteration and r["agent"] == 0 for r in rows)
        assert len(own) == 4 * 2  # every prompt x K
        assert all(r["terms"] == {"even_length": r["reward"]} for r in own)
        assert all(r["reward"] == float(len(r["completion"]) % 2 == 0) for r in own)
        assert sum(r["kept"] for r in rows) == history[iteration]["kept"]  # the selection, row by row
        assert all(r["reward"] == 1.0 for r in rows if r["kept"] or r["replayed"])
        assert all(r["finish_reason"] in ("stop", "length") for r in rows)
        assert all(r["prompt"] == [{"role": "user", "content": f"Say {WORDS[r['prompt_id']]}."}] for r in rows)
        assert sum(r["replayed"] for r in rows) == history[iteration]["replayed"]
        assert isinstance(history[iteration]["kept"], int)  # a count, not 8.0
    assert "[SelfSFT 1/2] [Stage 2] Best sample (reward 1.000" in caplog.text
    assert "[SelfSFT 1/2] [Stage 2] Worst sample (reward 0.000" in caplog.text


def test_a_large_iteration_writes_a_seeded_subset_with_every_kept_row(tmp_path):
    rows = [{"iteration": 3, "kept": i % 5 == 0, "i": i} for i in range(20)]
    path = write_samples(tmp_path, 3, rows, per_iteration=8, seed=1)
    written = read_rows(path)
    assert len(written) == 8 and [r["i"] for r in written] == sorted(r["i"] for r in written)
    assert {r["i"] for r in written if r["kept"]} == {0, 5, 10, 15}
    assert read_rows(write_samples(tmp_path, 3, rows, per_iteration=8, seed=1)) == written  # seeded
    assert len(read_rows(write_samples(tmp_path, 3, rows, per_iteration=None))) == 20
    assert write_samples(tmp_path, 4, rows, per_iteration=0) is None and not (tmp_path / "samples" / "iteration_0004.jsonl").exists()


def test_a_resume_drops_the_samples_of_iterations_it_redoes(make_agent, tokenizer, tmp_path):
    finetune_llm_selfsft([make_agent()], make_env(tokenizer), iterations=1, prompts_per_iteration=2, eval_samples=1,
                         checkpoint_path=tmp_path, verbose=False)
    stale = tmp_path / "samples" / "iteration_0002.jsonl"  # as a run killed in iteration 2 would leave it
    stale.write_text('{"iteration": 2}\n')
    finetune_llm_selfsft([make_agent()], make_env(tokenizer), iterations=1, prompts_per_iteration=2, eval_samples=1,
                         checkpoint_path=tmp_path, verbose=False, resume=True)
    assert not stale.exists() and (tmp_path / "samples" / "iteration_0001.jsonl").exists()


def test_tensorboard_gets_the_metrics_and_wandb_a_samples_table(make_agent, tokenizer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    finetune_llm_selfsft([make_agent()], make_env(tokenizer), iterations=1, prompts_per_iteration=2, eval_samples=1,
                         checkpoint_path=run, verbose=False, tensorboard=True, wb=True,
                         wandb_config={"mode": "offline", "dir": str(tmp_path), "name": "tiny"})
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/eval")] == [0, 1]
    assert [e.step for e in events.Scalars("data/kept")] == [0, 1]
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/samples/completions_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:5] == ["iteration", "agent", "prompt_id", "prompt", "completion"]
    assert len(table["data"]) == 2 * 2 and {row[0] for row in table["data"]} == {1}


def test_stage_logs_show_from_python_without_any_logging_setup(saved_tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import agilerl_selfsft, logging
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from agilerl_selfsft import SelfSFT, SelfSFTGym, Task, finetune_llm_selfsft
        tok = AutoTokenizer.from_pretrained({str(saved_tiny_model)!r})
        model = AutoModelForCausalLM.from_pretrained({str(saved_tiny_model)!r})
        agent = SelfSFT(pad_token_id=tok.pad_token_id, pad_token=tok.pad_token, actor_network=model, tokenizer=tok,
                        lora_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
                        batch_size=2, max_new_tokens=4, num_generations=2, gradient_checkpointing=False)
        tasks = [Task(i, [{{"role": "user", "content": w}}], w, {{}}) for i, w in enumerate(["a", "b"])]
        env = SelfSFTGym(tasks, tasks, tok, lambda p, c, **k: [1.0] * len(c), keep_truncated=True)
        finetune_llm_selfsft([agent], env, iterations=1, prompts_per_iteration=2, eval_samples=1)
        assert not logging.getLogger().handlers  # the root logger was left alone
        assert not logging.getLogger("agilerl_selfsft").handlers  # and ours is as it was after the run
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[SelfSFT 0/1] [Stage 5] Evaluating the base policy on 2 held-out prompts..." in done.stderr
    assert "[SelfSFT 1/1] [Stage 4] Training on" in done.stderr
    assert "\r" not in done.stderr  # no progress bar drawn into a file
