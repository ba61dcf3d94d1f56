"""``--timeout`` inside the process: a case that runs too long raises :class:`CaseTimeout`."""

from __future__ import annotations

import contextlib
import signal
import threading


class CaseTimeout(Exception):
    """Raised inside a case that ran past ``--timeout``."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (checked between native calls)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
