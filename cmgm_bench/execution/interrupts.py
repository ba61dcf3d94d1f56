"""Ctrl-C (and SIGTERM) during a sweep is never lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised at the next bytecode the
main thread runs. When that bytecode belongs to a finalizer (``__del__``, a
weakref callback run by the garbage collector), the exception is printed as
"Exception ignored in ..." and dropped; library code that catches
``BaseException`` drops it too. A sweep frees and collects a case's objects
after every case, so an interrupt can land there, and the sweep would then run
to its end and exit 0. :func:`watched` records the signal as well as raising,
and :meth:`Interrupts.check` raises again between cases if it was dropped.
SIGTERM (a CI job cancelled, a scheduler's limit) is handled the same way, so the
finished cases are saved and an isolated case's child is stopped; the exit code
is then ``128 + signal``.
"""

from __future__ import annotations

import contextlib
import signal
import threading


SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signal_number`` says which."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


class Interrupts:
    """Whether SIGINT or SIGTERM arrived inside a :func:`watched` block."""

    def __init__(self):
        self.received = threading.Event()
        self.signal_number = signal.SIGINT

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived (whether or not its first exception was dropped)."""
        if self.received.is_set():
            raise Interrupted(self.signal_number)


@contextlib.contextmanager
def watched():
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (a ``KeyboardInterrupt``) and are remembered; outside the main
    thread (where no handler can be set) nothing is remembered and the default behaviour stays."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def on_signal(signum, frame):
        interrupts.signal_number = signum
        interrupts.received.set()
        raise Interrupted(signum)

    previous = {number: signal.signal(number, on_signal) for number in SIGNALS}
    try:
        yield interrupts
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
