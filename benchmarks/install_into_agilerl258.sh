#!/usr/bin/env bash
# Does `pip install -e .` leave an AgileRL 2.58 user's stack alone? Builds a fresh venv the way an AgileRL 2.58 LLM
# user has it (torch, then agilerl[cpu-llm]==2.58.0), records `pip freeze`, installs this package with a plain
# `pip install -e .` (no constraints, no extras), records `pip freeze` again and writes the difference.
#   bash benchmarks/install_into_agilerl258.sh [VENV_DIR]     (about 5 min; results in benchmarks/results/install_258/)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR=${1:-$(mktemp -d)/venv}
OUT=benchmarks/results/install_258
mkdir -p "$OUT"
python3 -m venv "$VENV_DIR"
PIP="$VENV_DIR/bin/python -m pip"
$PIP install -q --upgrade pip 2>/dev/null
$PIP install -q torch==2.13.0 2>/dev/null
$PIP install -q 'agilerl[cpu-llm]==2.58.0' 2>/dev/null
$PIP freeze --exclude-editable | sort > "$OUT/before.txt"
$PIP install -q -e . 2>/dev/null
$PIP freeze --exclude-editable | sort > "$OUT/after.txt"
{
  echo "# pip freeze before and after \`pip install -e .\` in a fresh agilerl 2.58 environment"
  echo
  echo "Made by \`bash benchmarks/install_into_agilerl258.sh\` on $(date -u +%Y-%m-%d) ($(uname -m), $(python3 --version))."
  echo "The environment: \`pip install torch==2.13.0\`, then \`pip install 'agilerl[cpu-llm]==2.58.0'\`."
  echo
  echo "| package | before | after |"
  echo "|---|---|---|"
  for pkg in agilerl torch transformers peft accelerate datasets liger-kernel deepspeed; do
    b=$(grep -iE "^${pkg//-/[-_]}==" "$OUT/before.txt" | cut -d= -f3 || true)
    a=$(grep -iE "^${pkg//-/[-_]}==" "$OUT/after.txt" | cut -d= -f3 || true)
    echo "| $pkg | ${b:--} | ${a:--} |"
  done
  echo
  echo "All changes (\`diff before.txt after.txt\`; agilerl-selfsft itself is editable and not listed):"
  echo
  echo '```'
  diff "$OUT/before.txt" "$OUT/after.txt" || true
  echo '```'
} > "$OUT/README.md"
cat "$OUT/README.md"
