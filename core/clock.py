"""When the running `videolm` command began: wall-clock budgets (`--max-minutes`) count from there,
so imports, set-up and data preparation are inside the budget, not on top of it."""

from __future__ import annotations

import time
from contextlib import contextmanager

_started: float | None = None


@contextmanager
def command():
    """Mark the span of one command (`videolm.cli.main.main` wraps each call in it)."""
    global _started
    outer, _started = _started, time.perf_counter()
    try:
        yield
    finally:
        _started = outer


def started() -> float:
    """The `time.perf_counter` reading at the start of the running command, or now outside one."""
    return time.perf_counter() if _started is None else _started
