"""One trainer per run directory: the lock, held by a real second process, refused by PID, freed when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agilerl_selfsft import SelfSFTError, SelfSFTGym, Task, finetune_llm_selfsft
from agilerl_selfsft.training.rundir import LOCK_FILE, run_lock

HOLDER = """
import sys, time
from agilerl_selfsft.training.rundir import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold(run_dir: Path) -> subprocess.Popen:
    """A separate process that takes the run directory's lock and keeps it until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no cleanup runs: only the kernel can release the lock
    assert proc.wait(timeout=60) == -signal.SIGKILL


def even_length(prompts, completions, **kwargs):
    return [float(len(c) % 2 == 0) for c in completions]


def make_env(tokenizer):
    tasks = [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {"answer": w})
             for i, w in enumerate(["one", "two", "three"])]
    return SelfSFTGym(tasks, tasks[:1], tokenizer, even_length, data_batch_size_per_gpu=2, keep_truncated=True)


def test_the_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        with pytest.raises(SelfSFTError, match=rf"^run directory {run} is in use by another trainer \(PID "
                                               rf"{holder.pid}\); wait for it to end, or stop it, before starting or "
                                               r"resuming a run there$"):
            with run_lock(run):
                pass
    finally:
        kill(holder)
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)  # a stale file, no longer a lock
    with run_lock(run), run_lock(run):  # free now; and re-entrant within one process
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    with run_lock(run):  # released when the outermost block ended
        pass


def test_the_python_entry_point_takes_the_same_lock(make_agent, tokenizer, tmp_path):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        with pytest.raises(SelfSFTError, match=rf"in use by another trainer \(PID {holder.pid}\)"):
            finetune_llm_selfsft([make_agent()], make_env(tokenizer), iterations=1, prompts_per_iteration=2,
                                 eval_samples=1, checkpoint_path=run, verbose=False)
        with pytest.raises(SelfSFTError, match=rf"in use by another trainer \(PID {holder.pid}\)"):
            finetune_llm_selfsft([make_agent()], make_env(tokenizer), iterations=1, prompts_per_iteration=2,
                                 eval_samples=1, checkpoint_path=run, verbose=False, resume=True)
        assert sorted(os.listdir(run)) == [LOCK_FILE]  # neither wrote a thing
    finally:
        kill(holder)
    _, history = finetune_llm_selfsft([make_agent()], make_env(tokenizer), iterations=1, prompts_per_iteration=2,
                                      eval_samples=1, checkpoint_path=run, verbose=False, resume=True)
    assert [r["iteration"] for r in history] == [0, 1]  # the dead holder's lock did not block the run
    with run_lock(run):  # and the run released its own lock when it ended
        pass


def run(make_agent, tokenizer, folder, reward=None, **kwargs):
    env = make_env(tokenizer)
    if reward is not None:
        env = SelfSFTGym(env.train_tasks, env.eval_tasks, tokenizer, reward, data_batch_size_per_gpu=2,
                         keep_truncated=True)
    return finetune_llm_selfsft([make_agent()], env, prompts_per_iteration=2, eval_samples=1, checkpoint_path=folder,
                                verbose=False, **{"iterations": 1, **kwargs})[1]


def test_python_runs_follow_the_command_lines_folder_rules(make_agent, tokenizer, tmp_path):
    folder = tmp_path / "mine"
    with pytest.raises(SelfSFTError) as info:  # a typo'd folder to resume: refused, and nothing is created
        run(make_agent, tokenizer, folder, resume=True)
    assert str(info.value) == (f"cannot resume {folder}: it does not exist; check the path, or start a new run there "
                               "without resume") and not folder.exists()
    assert [r["iteration"] for r in run(make_agent, tokenizer, folder)] == [0, 1]
    first = (folder / "metrics.jsonl").read_text()
    with pytest.raises(SelfSFTError) as info:  # re-running the snippet does not silently replace the run
        run(make_agent, tokenizer, folder)
    assert str(info.value) == (f"output dir {folder} holds another run; resume it (--resume, resume=True) or replace "
                               "it (--overwrite, overwrite=True)")
    assert (folder / "metrics.jsonl").read_text() == first
    with pytest.raises(SelfSFTError, match="resume and overwrite exclude each other"):
        run(make_agent, tokenizer, folder, resume=True, overwrite=True)
    assert [r["iteration"] for r in run(make_agent, tokenizer, folder, iterations=2, resume=True)] == [0, 1, 2]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SelfSFTError, match=r"also holds notes.txt"):  # overwrite deletes only what a run wrote
        run(make_agent, tokenizer, folder, overwrite=True)
    (folder / "notes.txt").unlink()
    assert [r["iteration"] for r in run(make_agent, tokenizer, folder, overwrite=True)] == [0, 1]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["iteration_0001.jsonl"]  # the old run's gone


def interrupted(prompts, completions, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C while the base policy is evaluated


def raises_in_training(prompts, completions, **kwargs):
    if len(prompts) > 1:  # the held-out split is one prompt, one sample: more is a training call
        raise ValueError("checker crashed")
    return [0.0] * len(completions)


def test_a_run_that_completes_no_iteration_leaves_nothing_behind(make_agent, tokenizer, tmp_path):
    folder = tmp_path / "mine"
    with pytest.raises(KeyboardInterrupt):
        run(make_agent, tokenizer, folder, reward=interrupted)
    assert not folder.exists()
    folder.mkdir()  # a folder that was there before: emptied of what the run wrote, kept
    with pytest.raises(SelfSFTError, match="raised ValueError: checker crashed"):
        run(make_agent, tokenizer, folder, reward=raises_in_training)
    assert sorted(os.listdir(folder)) == [LOCK_FILE]
    assert [r["iteration"] for r in run(make_agent, tokenizer, folder)] == [0, 1]  # a re-run is not refused
    with pytest.raises(SelfSFTError, match="raised ValueError"):  # after a complete iteration, everything stays
        run(make_agent, tokenizer, folder, reward=raises_in_training, iterations=2, resume=True)
    assert [r["iteration"] for r in run(make_agent, tokenizer, folder, iterations=1, resume=True)] == [0, 1]
