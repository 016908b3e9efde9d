"""Versioned checkpoints of a run: ``checkpoints/iteration_NNNN/`` in AgileRL's layout, and ``latest``.

Each checkpoint is written into a hidden temporary folder and renamed into place, then ``latest`` (a
relative symlink) is switched to it atomically, so ``latest`` only ever points at a complete checkpoint.
Only the newest ``keep_last`` iterations are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from collections.abc import Callable
from typing import Any

from agilerl.utils.utils import save_llm_checkpoint

from agilerl_selfsft.runstate import crash_point

MANIFEST = "selfsft.json"


def save_iteration(
    agent: Any,
    run_dir: str | Path,
    iteration: int,
    keep_last: int = 3,
    info: dict | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``agent`` as ``run_dir/checkpoints/iteration_NNNN`` and point ``latest`` at it.

    :param extra: writes more files into the (temporary) checkpoint folder before it is renamed into place
    :return: the checkpoint folder
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (the checkpoint just written is kept), got {keep_last}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"iteration_{iteration:04d}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_llm_checkpoint(agent, str(tmp))
    manifest = {"iteration": iteration, "base_model": agent.pretrained_model_name_or_path, **(info or {})}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if extra is not None:
        extra(tmp)
    crash_point("checkpoint", iteration)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = root / ".latest.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(name, target_is_directory=True)
    os.replace(link, root / "latest")
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    versions = sorted(p for p in root.glob("iteration_*") if p.is_dir() and not p.is_symlink())
    for old in versions[: max(0, len(versions) - keep_last)]:
        shutil.rmtree(old)
