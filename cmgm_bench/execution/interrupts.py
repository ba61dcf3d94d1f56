"""Ctrl-C during a sweep is never lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised at the next bytecode the
main thread runs. When that bytecode belongs to a finalizer (``__del__``, a
weakref callback run by the garbage collector), the exception is printed as
"Exception ignored in ..." and dropped; library code that catches
``BaseException`` drops it too. A sweep frees and collects a case's objects
after every case, so an interrupt can land there, and the sweep would then run
to its end and exit 0. :func:`watched` records the signal as well as raising,
and :meth:`Interrupts.check` raises again between cases if it was dropped.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupts:
    """Whether SIGINT arrived inside a :func:`watched` block."""

    def __init__(self):
        self.received = threading.Event()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if SIGINT arrived (whether or not its first exception was dropped)."""
        if self.received.is_set():
            raise KeyboardInterrupt


@contextlib.contextmanager
def watched():
    """Within the block, SIGINT raises ``KeyboardInterrupt`` as usual and is also remembered; outside the main
    thread (where no handler can be set) nothing is remembered and the default behaviour stays."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def on_sigint(signum, frame):
        interrupts.received.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)
