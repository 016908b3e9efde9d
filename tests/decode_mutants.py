"""Do the decode tests bite? Break the decode loop on purpose, one way at a time, and list the tests that fail.

    .venv/bin/python tests/decode_mutants.py [test files...]

Each breakage is applied to a copy of the working tree in a temporary folder (the checkout is never written),
and the generation tests run there. A breakage no test catches is printed as ``NOTHING`` and makes the exit
status 1. (Not collected by pytest: it runs the suite many times.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECODE, FOLDING = "agilerl_selfsft/generation/decode.py", "agilerl_selfsft/generation/folding.py"
MUTANTS = {  # name: (file, code, the broken code)
    "row order (r // K without the length sort's order)": (
        DECODE, "i = order[r // num_generations]", "i = r // num_generations"),
    "join mask (left-padded cache columns attended)": (
        DECODE, "self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(other.mask, length)])",
        "self.mask = torch.cat([F.pad(self.mask, (length - self.mask.shape[1], 0), value=1), "
        "F.pad(other.mask, (length - other.mask.shape[1], 0), value=1)])"),
    "position ids (padding counted as positions)": (
        DECODE, "positions = (mask.cumsum(1) - 1).clamp(min=0)",
        "positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)"),
    "stop handling (rows decode on past their stop token)": (
        DECODE, "rows.done |= torch.isin(chosen, stops) | (rows.count >= sampling.max_new_tokens)",
        "rows.done |= rows.count >= sampling.max_new_tokens"),
    "LoRA folding (B·A without the adapter's scaling)": (
        FOLDING, "delta = sum(m.get_delta_weight(a) for a in adapters)",
        "delta = sum(m.lora_B[a].weight @ m.lora_A[a].weight for a in adapters)"),
    "sliding windows (prefix shared with padding inside the window)": (
        DECODE, "                shared = 0  # padding", "                pass  # padding"),
}
TESTS = ["tests/generation/test_decode.py", "tests/generation/test_decode_architectures.py",
         "tests/algorithm/test_selfsft.py"]


def main(tests: list[str]) -> int:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in files:
            if (ROOT / name).is_file():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes((ROOT / name).read_bytes())
        for name, (path, code, broken) in MUTANTS.items():
            target = Path(tmp) / path
            original = target.read_text()
            if original.count(code) != 1:
                raise SystemExit(f"{name}: the code to break is no longer in {path} exactly once: {code!r}")
            target.write_text(original.replace(code, broken))
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=tmp,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tmp})
            target.write_text(original)
            failed = sorted({line.split()[1].split("::")[1].split("[")[0] for line in run.stdout.splitlines()
                             if line.startswith(("FAILED", "ERROR")) and "::" in line})
            missed += not failed
            print(f"{name}: {run.stdout.strip().splitlines()[-1]}\n    caught by: {', '.join(failed) or 'NOTHING'}",
                  flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or TESTS))
