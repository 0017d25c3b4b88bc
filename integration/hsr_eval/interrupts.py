"""SIGTERM handled like Ctrl-C: the command unwinds, so every `finally` runs (servers stopped,
staging folders removed) instead of the process vanishing mid-write. Standard library only."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["sigterm_unwinds"]


@contextmanager
def sigterm_unwinds(message: str) -> Iterator[None]:
    """Inside the block, SIGTERM raises SystemExit(`message`) in the main thread (elsewhere a
    signal handler cannot be set, and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise SystemExit(message.format(signum=signum))

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
