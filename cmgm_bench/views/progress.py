"""The progress line of a sweep: cases done, running and failed, and where the last one ran.

With a remote executor several cases run at once on several nodes; the line
says how many are running, how many failed (``error`` or ``timeout``), and the
last finished case with the host it ran on.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cmgm_bench.config.cases import Case
from cmgm_bench.measure.measurement import Measurement, Status

FAILED = (Status.ERROR, Status.TIMEOUT)


class SweepProgress:
    """A rich progress bar fed by a sweep's ``on_case_start`` / ``on_case_done`` callbacks."""

    def __init__(self, total: int, done: int, console: Console):
        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
        self.progress = Progress(*columns, console=console, transient=False)
        self.task = self.progress.add_task("calibrating", total=total, completed=done)
        self.running: list[Case] = []
        self.failed = 0
        self.last = ""

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, kind, value, trace) -> None:
        if kind is not None and not issubclass(kind, KeyboardInterrupt):  # the error's line stands alone
            self.progress.live.transient = True
        self.stop()

    def stop(self) -> None:
        """Leave the line as it stands (before a message below it)."""
        self.progress.stop()

    def started(self, case: Case, index: int) -> None:
        self.running.append(case)
        self._show()

    def done(self, case: Case, measurement: Measurement) -> None:
        if case in self.running:
            self.running.remove(case)
        self.failed += measurement.status in FAILED
        host = (measurement.host or {}).get("hostname")
        self.last = f"{case.impl} {case.mode} {case.shape_label} {measurement.status}" + (f" on {host}" if host else "")
        self.progress.advance(self.task)
        self._show()

    def _show(self) -> None:
        parts = [f"running {len(self.running)}"]
        if len(self.running) == 1:
            case = self.running[0]
            parts[0] += f" ({case.impl} {case.mode} {case.shape_label})"
        parts.append(f"failed {self.failed}")
        if self.last:
            parts.append(f"last: {self.last}")
        self.progress.update(self.task, description=" · ".join(parts))
