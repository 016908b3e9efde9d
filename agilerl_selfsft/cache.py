"""The user cache folder: converted models and the measured dtype probe (``$SELFSFT_CACHE_DIR`` overrides it)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The folder where converted models and probe results are cached (``$SELFSFT_CACHE_DIR``, else
    ``~/.cache/agilerl-selfsft``)."""
    env = os.environ.get("SELFSFT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "agilerl-selfsft"
