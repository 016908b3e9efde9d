"""Fault injection for the resume tests: die at an exact point of the loop, as a pre-empted machine would.

``SELFSFT_CRASH_AT=<name>:<iteration>`` makes :func:`crash_point` kill the process with SIGKILL at the named
point of that iteration (``generate``, ``learn``, ``checkpoint``): no cleanup, no exception handlers. Unset
(always, outside the tests) it does nothing.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str, iteration: int) -> None:
    """Kill this process here when ``SELFSFT_CRASH_AT`` is ``<name>:<iteration>``."""
    if os.environ.get("SELFSFT_CRASH_AT") == f"{name}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
