"""Learning benchmark: held-out reward against training time for SelfSFT, its random-selection control, AgileRL's
GRPO (as shipped and with ``initial_prompt_len`` fixed) and SFT on the gold answers, on the embedded model.

For each task (capitals with the ``contains`` reward, arithmetic with ``first_number``; ``--tasks code``, the
shipped code task with ``python_tests``, is opt-in: its 160-token answers make runs several times slower), each
seed and each method, a run trains LoRA adapters from the same base model (SmolLM2-135M-Instruct, fp32, LoRA r16 on all
linear layers, lr 2e-4 for every method) under the same budget of training seconds, and evaluates the held-out
prompts every quarter of the budget and at the end (greedy reward, and the mean reward of ``--eval-samples``
samples per prompt at T=0.8), off the clock. Every method is evaluated by the same code
(``agilerl_selfsft.training.evaluation.evaluate`` on a SelfSFT agent; GRPO's adapter is loaded into one). The untrained
model is evaluated once per task and seed: the t=0 point of every curve. What one iteration of each method is,
and how tokens are counted: ``learning_methods.py``. Two methods learn without the task's checker, which still
scores the held-out split: ``vote`` (``majority_vote``, arithmetic only) and ``judge`` (the policy judging
itself, capitals only).

Each run is its own process (fresh memory) with one torch thread; ``--jobs`` of them run at once, seeds
outermost and the method order rotated, so no method always runs in the same conditions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning.py                  # full: 2 tasks x 3 seeds x 5 methods
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning.py --quick          # smoke test (capitals, 1 seed)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning.py --tasks arithmetic capitals --methods selfsft vote judge \
        --budget-s 90 --eval-every-s 45 --eval-prompts 20 --output-dir benchmarks/results/learning_rewards
    .venv/bin/python benchmarks/learning.py --from-json benchmarks/results/learning/learning.json   # re-render

Writes ``learning.json`` (every point, settings, machine), ``learning.md`` (tables and the two goal checks) and
``learning_<task>.png`` into ``--output-dir`` (``benchmarks/results/learning``; ``runs/learning_quick`` for
``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run as a script: import the sibling modules
sys.path.insert(1, str(HERE.parent))  # and the library of this checkout

# as in learning_methods (checked in main), which is not imported for --from-json: it loads agilerl
METHODS = ("selfsft", "random", "grpo_shipped", "grpo_fixed", "gold_sft", "vote", "judge", "difficulty", "restart",
           "top1", "shorter", "efficient")
TASKS = ("capitals", "arithmetic", "code")
DEFAULT_TASKS = ("capitals", "arithmetic")  # code's 160-token answers make its runs several times slower
ONLY_ON = {"vote": ("arithmetic",), "judge": ("capitals",)}  # methods run on some tasks only
COLOURS = {"selfsft": "tab:blue", "random": "tab:gray", "grpo_shipped": "tab:orange", "grpo_fixed": "tab:red",
           "gold_sft": "tab:green", "vote": "tab:purple", "judge": "tab:brown", "difficulty": "tab:cyan",
           "restart": "tab:olive", "top1": "tab:pink", "shorter": "black",
           "efficient": "goldenrod"}


# ---- running ----
def job_order(tasks: list[str], seeds: list[int], methods: list[str]) -> list[dict[str, Any]]:
    """Seeds outermost; per task the base evaluation first, then the methods in an order rotated every time
    (a method of :data:`ONLY_ON` runs on its tasks only)."""
    jobs, turn = [], 0
    for seed in seeds:
        for task in tasks:
            jobs.append({"task": task, "seed": seed, "method": "base"})
            here = [m for m in methods if task in ONLY_ON.get(m, (task,))]
            rotated = here[turn % len(here):] + here[: turn % len(here)] if here else []
            jobs += [{"task": task, "seed": seed, "method": m} for m in rotated]
            turn += 1
    return jobs


def run_jobs(
    jobs: list[dict[str, Any]], settings: dict[str, Any], jobs_at_once: int, out_dir: Path
) -> list[dict[str, Any]]:
    """Run every job in its own ``learning_methods.py`` process, ``jobs_at_once`` at a time, 1 thread each."""
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    pending, running, results = list(jobs), [], []
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs_at_once:
            job = pending.pop(0)
            name = f"{job['task']}_seed{job['seed']}_{job['method']}"
            out, log = logs / f"{name}.json", open(logs / f"{name}.log", "w")
            command = [sys.executable, str(HERE / "learning_methods.py"), json.dumps({**job, "settings": settings}), str(out)]
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((proc, job, name, out, log, time.perf_counter()))
            print(f"[learning {time.perf_counter() - started:6.0f}s] start {name}", flush=True)
        time.sleep(1.0)
        for item in [r for r in running if r[0].poll() is not None]:
            proc, job, name, out, log, t0 = item
            running.remove(item)
            log.close()
            if proc.returncode == 0 and out.is_file():
                result = json.loads(out.read_text())
                last = result["points"][-1]
                note = (f"sampled {last['sampled']:.3f}, greedy {last['greedy']:.3f} at {result['train_s']:.0f} training s "
                        f"({len(result['points'])} eval points), peak RSS {result['peak_rss_mib']} MiB")
            else:
                tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                result = {**job, "error": f"exit code {proc.returncode}", "log_tail": tail, "points": []}
                note = f"FAILED (exit {proc.returncode}); see {logs / (name + '.log')}"
            results.append(result)
            clock = time.perf_counter()
            print(f"[learning {clock - started:6.0f}s] done  {name} in {clock - t0:.0f}s: {note}", flush=True)
    return results


# ---- summarising ----
def curves(result: dict[str, Any], task: str, method: str) -> list[list[dict[str, Any]]]:
    """Per seed, the base point (t=0) followed by the run's points."""
    runs = [r for r in result["runs"] if r["task"] == task and r["points"]]
    base = {r["seed"]: r["points"][0] for r in runs if r["method"] == "base"}
    return [[{**base[r["seed"]], "train_s": 0.0}, *r["points"]] if r["seed"] in base else r["points"]
            for r in runs if r["method"] == method]


def held(points: list[dict[str, Any]], key: str, times: np.ndarray) -> np.ndarray:
    """The value of the latest evaluation at or before each time (the adapter a run holds at that point)."""
    t = np.array([p["train_s"] for p in points])
    v = np.array([p.get(key) if p.get(key) is not None else np.nan for p in points], dtype=float)
    idx = np.searchsorted(t, times, side="right") - 1
    return np.where(idx >= 0, v[np.clip(idx, 0, None)], np.nan)


def band(runs: list[list[dict[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Times (every evaluation time of any seed) and the mean, min and max over seeds of the held values."""
    times = np.unique(np.concatenate([[p["train_s"] for p in r] for r in runs]))
    values = np.stack([held(r, key, times) for r in runs])
    return times, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def summary(result: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """Per method: final sampled/greedy rewards per seed, mean training seconds, tokens, peak RSS."""
    out = {}
    for method in ["base", *result["settings"]["methods"]]:
        runs = [r for r in result["runs"] if r["task"] == task and r["method"] == method and r["points"]]
        if runs:
            finals = [r["points"][-1] for r in runs]
            out[method] = {"sampled": [f["sampled"] for f in finals], "greedy": [f["greedy"] for f in finals],
                           "pass_at_k": [f.get("pass_at_k") for f in finals], "maj_at_k": [f.get("maj_at_k") for f in finals],
                           "completion_tokens": [f.get("completion_tokens") for f in finals],
                           "train_s": float(np.mean([f["train_s"] for f in finals])),
                           "gen_tokens": float(np.mean([f["gen_tokens"] for f in finals])),
                           "trained_tokens": float(np.mean([f["trained_tokens"] for f in finals])),
                           "iterations": float(np.mean([f.get("iterations", 0) for f in finals])),
                           "points": float(np.mean([len(r["points"]) for r in runs])),
                           "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "seeds": len(runs)}
    return out


def goals(result: dict[str, Any], task: str, table: dict[str, dict[str, Any]]) -> list[str]:
    """The two goal checks, as Markdown lines."""
    lines = []
    grpo = [m for m in ("grpo_shipped", "grpo_fixed") if m in table]
    if "selfsft" in table and grpo:
        best = max(grpo, key=lambda m: np.mean(table[m]["sampled"]))
        target, grpo_s = float(np.mean(table[best]["sampled"])), table[best]["train_s"]
        times, mean, _, _ = band(curves(result, task, "selfsft"), "sampled")
        reached = times[mean >= target - 1e-9]
        when = float(reached[0]) if len(reached) else None
        ok = when is not None and when <= grpo_s / 2
        lines.append(f"- (a) SelfSFT's mean sampled held-out reward first reaches GRPO's best final mean ({best}: "
                     f"{target:.3f} after {grpo_s:.0f} training s) at "
                     + (f"**{when:.0f} s**" if when is not None else "**never** (within its budget)")
                     + f"; half of GRPO's time is {grpo_s / 2:.0f} s: **{'met' if ok else 'not met'}**."
                     + (" (SelfSFT's curve starts at the base model's reward, so t=0 means GRPO's final mean is at or "
                        "below the base model's.)" if when == 0 else ""))
    for method in [m for m in ("difficulty", "restart", "top1", "shorter") if m in table and "selfsft" in table]:
        target = float(np.mean(table["selfsft"]["sampled"]))
        tokens = float(np.mean([f["gen_tokens"] for r in result["runs"] if r["task"] == task
                                and r["method"] == "selfsft" and r["points"] for f in r["points"][-1:]]))
        def first_reach(name: str) -> list[float | None]:  # per seed: tokens generated at the first point >= target
            out = []
            for run in [r for r in result["runs"] if r["task"] == task and r["method"] == name and r["points"]]:
                hit = [p for p in run["points"] if p["sampled"] >= target - 1e-9]
                out.append(hit[0]["gen_tokens"] if hit else None)
            return out

        reached, own = first_reach(method), [t for t in first_reach("selfsft") if t is not None]
        got = [t for t in reached if t is not None]
        diff = float(np.mean(table[method]["sampled"])) - target
        lines.append(f"- {method} vs selfsft: final sampled held-out reward {diff:+.3f}; {len(got)} of {len(reached)} "
                     f"seeds reach selfsft's final mean ({target:.3f}, after {tokens:.0f} generated tokens)"
                     + (f", after {np.mean(got):.0f} generated tokens on average ({np.mean(got) / tokens - 1:+.0%}); "
                        f"selfsft's own seeds first reach it after {np.mean(own):.0f} (a curve that peaks before its "
                        "end reaches its final mean early)" if got else "") + ".")
    if "selfsft" in table and "random" in table:
        diff = float(np.mean(table["selfsft"]["sampled"]) - np.mean(table["random"]["sampled"]))
        diff_g = float(np.mean(table["selfsft"]["greedy"]) - np.mean(table["random"]["greedy"]))
        lines.append(f"- (b) SelfSFT minus random selection, final sampled held-out reward: **{diff:+.3f}** "
                     f"(greedy {diff_g:+.3f}); goal >= 0.1: **{'met' if diff >= 0.1 else 'not met'}**.")
    return lines


def reward_lines(result: dict[str, Any], task: str) -> list[str]:
    """Per method: its training reward when that is not the task's checker, the counts its training reward
    reported (mean per iteration, over every iteration of every seed) and those of the final evaluation."""
    lines = []
    for method in ["base", *result["settings"]["methods"]]:
        runs = [r for r in result["runs"] if r["task"] == task and r["method"] == method and r["points"]]
        per_iteration = [m for r in runs for p in r["points"] for m in p.get("train_reward_metrics", [])]
        finals = [r["points"][-1].get("eval_reward_metrics", {}) for r in runs]
        spec = runs[0].get("train_reward") if runs else None
        parts = [f"trained on `{json.dumps(spec)}`"] if spec not in (None, result["rewards"][task]) else []
        keys = sorted({k for m in per_iteration for k in m})
        if keys:
            parts.append(f"its counts per iteration ({len(per_iteration)} iterations): "
                         + ", ".join(f"{k} {np.mean([m.get(k, 0.0) for m in per_iteration]):.2f}" for k in keys))
        drawn = [d for r in runs for p in r["points"] for d in p.get("drawn", []) if d]
        if method == "difficulty" and drawn:
            parts.append(f"its draws per iteration ({len(drawn)} iterations): "
                         + ", ".join(f"{k} {np.mean([d[k] for d in drawn]):.2f}" for k in sorted(drawn[0])))
        keys = sorted({k for m in finals for k in m})
        if keys:
            parts.append(f"final held-out counts (mean over {len(finals)} seeds): "
                         + ", ".join(f"{k} {np.mean([m.get(k, 0.0) for m in finals]):.1f}" for k in keys))
        if parts:
            lines.append(f"- {method}: " + "; ".join(parts) + ".")
    return lines


def markdown(result: dict[str, Any]) -> str:
    from machine import environment_markdown

    s = result["settings"]
    lines = ["# Learning benchmark: held-out reward vs training time (SmolLM2-135M-Instruct)", "",
             f"Budget {s['budget_s']:.0f} training s per run (evaluation excluded, a run stops at the first iteration "
             f"boundary at or after it); seeds {s['seeds']}; "
             + (f"train: the first {s['train_prompts']} prompts; " if s.get("train_prompts") else "")
             + f"held-out: the first {s['eval_prompts']} prompts, one greedy "
             f"answer and {s['eval_samples']} samples at T={s['eval_temperature']} each, evaluated every "
             f"{s['eval_every_s'] or s['budget_s'] / 4:.0f} training s and at the end. {result['process_model']}", "",
             "Final = each run's last evaluation; mean ± std over seeds. Training s, tokens and iterations: means over "
             "seeds at that point. Tokens generated: sampled for training (GRPO: counted from its completion ids, "
             "through the first end-of-turn token). Tokens trained: loss tokens summed over learn calls (SFT: "
             "`loss_mask` of every batch, each epoch again; GRPO: the sum of its `action_masks`, which as shipped "
             "include the prompt's tokens).", ""]
    for task in s["tasks"]:
        table = summary(result, task)
        if not table:
            continue
        lines += [f"## {task} (reward `{result['rewards'][task]}`)", "",
                  f"| method | final sampled | final greedy | final pass@{s['eval_samples']} | final maj@{s['eval_samples']} "
                  "| eval completion tokens | training s | iterations | tokens generated | tokens trained "
                  "| eval points | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, row in table.items():
            lines.append(f"| {method} | {mean_std(row['sampled'])} | {mean_std(row['greedy'])} | "
                         f"{mean_std(row['pass_at_k'])} | {mean_std(row['maj_at_k'])} | "
                         f"{mean_std(row['completion_tokens'])} | {row['train_s']:.0f} | "
                         f"{row['iterations']:.1f} | {row['gen_tokens']:.0f} | {row['trained_tokens']:.0f} | "
                         f"{row['points']:.1f} | {row['peak_rss_mib']} |")
        grpo = [r for r in result["runs"] if r["task"] == task and "grpo_repeats_in_first_pass" in r]
        if grpo:
            lines += ["", f"GRPO data order: {sum(r['grpo_prompts_seen'] for r in grpo)} train prompts drawn in "
                      f"{len(grpo)} runs; prompts repeated within a run's first pass over the train set: "
                      f"{sum(r['grpo_repeats_in_first_pass'] for r in grpo)} (successive `finetune_llm_reasoning` calls "
                      "continue through the dataset)."]
        lines += ["", *reward_lines(result, task), *goals(result, task, table), "", f"![{task}](learning_{task}.png)", ""]
    failed = [r for r in result["runs"] if r.get("error")]
    if failed:
        lines += ["## Failed runs", "", *(f"- {r['task']} seed {r['seed']} {r['method']}: {r['error']}" for r in failed), ""]
    lines += ["## Settings", "", "```", json.dumps(s, indent=1), "```", "",
              f"Total wall time {result['wall_s'] / 60:.1f} min; fp32 matmul with 1 thread: "
              f"{result['matmul_gflops_1_thread']:.0f} GFLOP/s.", ""]
    for extra in result.get("added", []):  # runs added to this result by a later invocation (--add-to)
        lines += [f"Added {extra['date']} ({extra['wall_s'] / 60:.1f} min, load before / after "
                  f"{extra['machine_load']['before']} / {extra['machine_load']['after']}): `{extra['command']}`", ""]
    return "\n".join(lines + environment_markdown(result))


def plot(result: dict[str, Any], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["settings"]["eval_samples"]
    panels = [("sampled", "held-out reward, sampled (T=0.8)"), ("greedy", "held-out reward, greedy")]
    for key, title in (("pass_at_k", f"held-out pass@{k}"), ("maj_at_k", f"held-out maj@{k}")):
        if any(p.get(key) is not None for r in result["runs"] if r["task"] == task for p in r["points"]):
            panels.append((key, title))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for method in result["settings"]["methods"]:
            runs = curves(result, task, method)
            if not runs:
                continue
            times, mean, low, high = band(runs, key)
            ax.step(times, mean, where="post", color=COLOURS.get(method), label=f"{method} ({len(runs)} seeds)")
            ax.plot(times, mean, "o", color=COLOURS.get(method), markersize=3)  # evaluation times
            ax.fill_between(times, low, high, step="post", color=COLOURS.get(method), alpha=0.15)
        ax.set(title=f"{task}: {title}", xlabel="training seconds", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("reward (mean line, min-max band over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "learning.md").write_text(markdown(result))
    for task in result["settings"]["tasks"]:
        if any(r["task"] == task and r["points"] for r in result["runs"]):
            plot(result, task, out_dir / f"learning_{task}.png")


def extended(earlier: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` with the runs of ``added`` (a new run replaces a failed one of the same task, seed and method),
    its methods, seeds and wall time added, and both invocations' commands, machine loads and dates kept."""
    new = {(r["task"], r["seed"], r["method"]) for r in added["runs"]}
    runs = [r for r in earlier["runs"] if (r["task"], r["seed"], r["method"]) not in new] + added["runs"]
    settings = dict(earlier["settings"])
    for key in ("methods", "seeds", "tasks"):
        settings[key] = list(dict.fromkeys([*earlier["settings"][key], *added["settings"][key]]))
    return {**earlier, "settings": settings, "runs": runs, "order": earlier["order"] + added["order"],
            "wall_s": round(earlier["wall_s"] + added["wall_s"], 1),
            "added": [*earlier.get("added", []), {k: added[k] for k in ("command", "date", "machine_load", "wall_s",
                                                                          "matmul_gflops_1_thread")}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: capitals, seed 0, 20 s, 8 prompts")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=None, help="training seconds per run (default 150; quick 20)")
    parser.add_argument("--eval-samples", type=int, default=None, help="samples per held-out prompt (default 2)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts used (default 40 = all; quick 8)")
    parser.add_argument("--eval-every-s", type=float, default=None, help="training s between evaluations (default budget/4)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature of training samples (default 0.8)")
    parser.add_argument("--prompts-per-iteration", type=int, default=None, help="train prompts per SFT iteration (default 16)")
    parser.add_argument("--train-prompts", type=int, default=None,
                        help="the first N train prompts only (default: all), so a budget covers several passes")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, 1 thread each")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--from-json", default=None, help="re-render learning.md and the plots from this learning.json")
    parser.add_argument("--add-to", default=None,
                        help="extend this learning.json with the runs of --methods/--seeds it lacks or that failed in "
                             "it, under its own settings, and re-render it")
    args = parser.parse_args()
    if args.from_json:
        path = Path(args.from_json)
        render(json.loads(path.read_text()), Path(args.output_dir) if args.output_dir else path.parent)
        print(f"rendered {(Path(args.output_dir) if args.output_dir else path.parent) / 'learning.md'}")
        return

    import torch
    from learning_methods import METHODS as RUN_METHODS
    from learning_methods import TASKS as TASK_REWARDS
    from learning_methods import Settings
    from machine import command_line, machine_info, machine_load, matmul_gflops, nproc

    from learning_methods import ONLY_ON as RUN_ONLY_ON

    assert (tuple(RUN_METHODS), tuple(TASK_REWARDS), RUN_ONLY_ON) == (METHODS, TASKS, ONLY_ON), \
        "learning.py and learning_methods.py disagree"
    torch.set_num_threads(1)
    settings = Settings.quick() if args.quick else Settings()
    for name in ("budget_s", "eval_samples", "eval_prompts", "eval_every_s", "temperature", "prompts_per_iteration",
                 "train_prompts"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    tasks = args.tasks or (["capitals"] if args.quick else list(DEFAULT_TASKS))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    out_dir = Path(args.output_dir or ("runs/learning_quick" if args.quick else HERE / "results" / "learning"))
    jobs = job_order(tasks, seeds, list(args.methods))
    earlier = json.loads(Path(args.add_to).read_text()) if args.add_to else None
    if earlier is not None:  # its settings; only the runs it lacks (or that failed in it)
        fields = {f.name for f in dataclasses.fields(Settings)}
        settings = Settings(**{k: v for k, v in earlier["settings"].items() if k in fields})
        done = {(r["task"], r["seed"], r["method"]) for r in earlier["runs"] if "error" not in r}
        jobs = [j for j in jobs if (j["task"], j["seed"], j["method"]) not in done]
        out_dir = Path(args.output_dir) if args.output_dir else Path(args.add_to).parent
    before, gflops, started = machine_load(), matmul_gflops(), time.perf_counter()
    print(f"[learning] {len(jobs)} runs ({len(tasks)} task(s) x {len(seeds)} seed(s) x (base + {len(args.methods)} "
          f"methods)), {args.jobs} at once, 1 thread each; budget {settings.budget_s:.0f} training s; output {out_dir}", flush=True)
    runs = run_jobs(jobs, dataclasses.asdict(settings), args.jobs, out_dir)
    result = {
        "settings": {**dataclasses.asdict(settings), "tasks": tasks, "seeds": seeds, "methods": list(args.methods),
                     "jobs": args.jobs, "quick": args.quick},
        "rewards": {t: TASK_REWARDS[t][1] for t in tasks},
        "process_model": f"Each run was its own process with 1 torch thread (OMP_NUM_THREADS=1); {args.jobs} ran "
                         f"concurrently on {nproc()} CPUs.",
        "order": [f"{j['task']}/{j['seed']}/{j['method']}" for j in jobs],
        "runs": runs, "wall_s": round(time.perf_counter() - started, 1), "matmul_gflops_1_thread": round(gflops, 1),
        "command": command_line(), "machine": machine_info(1), "machine_load": {"before": before, "after": machine_load()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if earlier is not None:
        result = extended(earlier, result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "learning.json").write_text(json.dumps(result, indent=1))
    render(result, out_dir)
    print("\n" + markdown(result).split("\n## Settings")[0])
    print(f"results: {out_dir / 'learning.json'}, {out_dir / 'learning.md'}")


if __name__ == "__main__":
    main()
