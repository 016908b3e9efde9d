"""Fault injection for the resume tests: die at an exact point of the loop, as a pre-empted machine would.

``SELFSFT_CRASH_AT=<name>:<iteration>`` makes :func:`crash_point` kill the process with SIGKILL at the named
point of that iteration (``generate``, ``learn``, ``checkpoint``): no cleanup, no exception handlers.
``<name>:<iteration>:SIGTERM`` sends it SIGTERM there instead, as a scheduler stopping the job would, at an exact
point rather than whenever another process gets to it. Unset (always, outside the tests) it does nothing.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str, iteration: int) -> None:
    """Kill this process here when ``SELFSFT_CRASH_AT`` is ``<name>:<iteration>`` (SIGKILL), or send it SIGTERM
    when it is ``<name>:<iteration>:SIGTERM``."""
    point = os.environ.get("SELFSFT_CRASH_AT", "")
    if point == f"{name}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif point == f"{name}:{iteration}:SIGTERM":
        os.kill(os.getpid(), signal.SIGTERM)
