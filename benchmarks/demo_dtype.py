"""The demo (``make demo``) in fp32 and in bf16, a few seeds each, on one machine: is bf16 faster, and does the
policy learn as much?

    .venv/bin/python benchmarks/demo_dtype.py                      # 3 seeds x 2 dtypes, about 35 min on 2 cores

Each run is ``agilerl-selfsft train`` on the demo config (``agilerl_selfsft/configs/capitals.yaml``) with only
``dtype`` and ``seed`` changed, in a process of its own, into a fresh run folder. The runs alternate (seed 1 fp32,
seed 1 bf16, seed 2 fp32, ...) so that a machine that slows down during the session slows both dtypes alike.
Each run's ``config.json`` is read back to check the dtype it used (``resolved.dtype``).

It reports, per dtype, the held-out gain (last evaluation minus the base evaluation) of every seed, their mean and
standard deviation, the wall time and where it went; and the difference of the mean gains with its standard error
(from the seeds' spread), the measure of "within noise".

Writes ``result.json`` and ``README.md`` to ``--output-dir`` (default ``benchmarks/results/demo_dtype``) after
every pair of runs; ``--resume`` keeps the seeds already there and runs the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_speed import CONFIG, ROOT, run_demo, summary  # noqa: E402
from machine import command_line, environment_markdown, machine_info, machine_load  # noqa: E402

DTYPES = ("float32", "bfloat16")


def demo_config(seed: int, dtype: str, path: Path) -> Path:
    """The demo's config with ``seed`` and ``dtype`` set, written to ``path`` (its data paths made absolute)."""
    source = ROOT / CONFIG
    config = yaml.safe_load(source.read_text())
    config["task"] = {k: str((source.parent / v).resolve()) for k, v in config["task"].items()}
    config.update(seed=seed, dtype=dtype)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread of one dtype's runs."""
    gains = [r["gain"] for r in runs]
    walls = [r["wall_s"] for r in runs]
    stages = {k: round(statistics.mean(r["seconds"][k] for r in runs), 1) for k in runs[0]["seconds"]}
    return {"gains": gains, "gain_mean": round(statistics.mean(gains), 4),
            "gain_sd": round(statistics.stdev(gains), 4) if len(gains) > 1 else None,
            "base_mean": round(statistics.mean(r["eval_reward"][0] for r in runs), 4),
            "last_mean": round(statistics.mean(r["eval_reward"][-1] for r in runs), 4),
            "wall_s": walls, "wall_mean_s": round(statistics.mean(walls), 1), "seconds_mean": stages}


def markdown(result: dict[str, Any]) -> str:
    agg, cmp = result["dtypes"], result["comparison"]
    lines = [
        "# The demo in fp32 and in bf16",
        "",
        f"`make demo`'s config (`{CONFIG}`) with `dtype` and `seed` set, at `{result['commit']}`, seeds "
        f"{', '.join(map(str, result['seeds']))}, the runs alternating between the dtypes, {result['threads']} threads.",
        "",
        "| dtype | gain per seed | gain mean ± sd | base → last (mean) | wall (mean) | sample | learn | evaluate | rest |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in DTYPES:
        a, s = agg[name], agg[name]["seconds_mean"]
        sd = "" if a["gain_sd"] is None else f" ± {a['gain_sd']:.3f}"
        lines.append(f"| {name} | {', '.join(f'{g:+.3f}' for g in a['gains'])} | {a['gain_mean']:+.3f}{sd} | "
                     f"{a['base_mean']:.3f} → {a['last_mean']:.3f} | {a['wall_mean_s'] / 60:.1f} min | "
                     + " | ".join(f"{s[k]:.0f} s" for k in ("sample", "learn", "evaluate", "rest")) + " |")
    se = "" if cmp["gain_difference_se"] is None else f" ± {cmp['gain_difference_se']:.3f} (SE from the seeds' spread)"
    lines += [
        "",
        f"**bf16 speed-up: {cmp['speedup']:.2f}×** (mean wall time, fp32 / bf16). "
        f"**Gain, bf16 − fp32: {cmp['gain_difference']:+.3f}{se}.**",
        "",
        "Gain: the last held-out evaluation's reward minus the base policy's, each the mean over 40 held-out prompts "
        "× 4 samples. Sample / learn / evaluate: seconds summed over a run (evaluate includes the base evaluation), "
        "mean over the seeds; rest: wall time less those and scoring (checkpoints, samples log, start-up). "
        "Every run's `config.json` recorded the dtype it was given (`resolved.dtype`).",
        "",
        *environment_markdown(result),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results" / "demo_dtype")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of --output-dir's result.json and run only the seeds it lacks")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    load_before = machine_load()
    result: dict[str, Any] = {"benchmark": "demo_dtype", "commit": commit, "seeds": [], "threads": args.threads,
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": command_line(), "runs": {d: [] for d in DTYPES}}
    if args.resume and (out / "result.json").exists():
        earlier = json.loads((out / "result.json").read_text())
        done = set(earlier["seeds"])
        result["runs"] = {d: [r for r in earlier["runs"][d] if r["seed"] in done] for d in DTYPES}
        result["commit"] = f"{earlier['commit']} (seeds {', '.join(map(str, sorted(done)))}), {commit}"
        result["date"] = f"{earlier['date']}, resumed {result['date']}"
        seeds = [s for s in seeds if s not in done]
    with tempfile.TemporaryDirectory(prefix="demo_dtype_") as tmp:
        for seed in seeds:
            for dtype in DTYPES:
                name = f"{dtype}_seed{seed}"
                run_dir = Path(tmp) / name
                print(f"[demo_dtype] {name}", flush=True)
                config = demo_config(seed, dtype, Path(tmp) / f"{name}.yaml")
                wall = run_demo(ROOT, run_dir, args.threads, out / f"{name}.log", config=config)
                used = json.loads((run_dir / "config.json").read_text())["resolved"]["dtype"]["dtype"]
                if used != dtype:
                    raise SystemExit(f"[demo_dtype] {name} ran in {used}, not {dtype}")
                rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                (out / f"metrics_{name}.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
                result["runs"][dtype].append({"seed": seed, **summary(rows, wall)})
                print(f"[demo_dtype] {name}: {wall / 60:.1f} min, gain {result['runs'][dtype][-1]['gain']:+.3f}",
                      flush=True)
            write(result, out, load_before, args.threads)  # after every pair: a cut-short session keeps its seeds
    print(f"[demo_dtype] wrote {out}/result.json and README.md", flush=True)


def write(result: dict[str, Any], out: Path, load_before: dict[str, Any], threads: int) -> None:
    """Aggregate the runs so far and write ``result.json`` and ``README.md``."""
    seeds = result["seeds"] = [r["seed"] for r in result["runs"]["bfloat16"]]
    agg = {d: aggregate(result["runs"][d]) for d in DTYPES}
    fp32, bf16 = agg["float32"], agg["bfloat16"]
    diff_se = None
    if fp32["gain_sd"] is not None and bf16["gain_sd"] is not None:
        diff_se = round((fp32["gain_sd"] ** 2 / len(seeds) + bf16["gain_sd"] ** 2 / len(seeds)) ** 0.5, 4)
    result["dtypes"] = agg
    result["comparison"] = {"speedup": round(fp32["wall_mean_s"] / bf16["wall_mean_s"], 3),
                            "gain_difference": round(bf16["gain_mean"] - fp32["gain_mean"], 4),
                            "gain_difference_se": diff_se}
    result["machine"] = machine_info(threads)
    result["machine_load"] = {"before": load_before, "after": machine_load()}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "README.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
