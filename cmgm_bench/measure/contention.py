"""What else the CPUs did while a case was timed: the case's ``contention``.

Linux counts each CPU's time by kind in ``/proc/stat``, in clock ticks. Over a
timed window, the busy time (user, nice, system, irq, softirq) of the CPUs this
process may run on (its affinity set), less this process's own CPU time
(``/proc/self/stat``, every thread, those that ended included), is other
processes' work on those cores; ``steal`` is the hypervisor running another
guest on them. Their sum as a share of the window's capacity (wall time x
cores) is the case's ``contention``. The involuntary context switches of this
process's threads (``/proc/self/task/*/status``) say how often the scheduler
took a thread of ours away; they are kept beside it.

Granularity and limits: the counters move in ticks (``os.sysconf("SC_CLK_TCK")``,
usually 100 a second), so each end of a window is uncertain by a tick per core;
the share subtracts that rounding (:data:`QUANTUM_TICKS` per core) first, so it
is the share the cores *surely* spent elsewhere, and a rounding step alone
never marks a case. Work of other processes counts whichever core of the
affinity set it ran on, also when a single-threaded case had another core to
itself: a neighbour still shares the caches, the memory bandwidth and the
clock. Where ``/proc`` is missing the reading is ``None`` (not measured), never
zero.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass

# A timed window whose cores spent more than this share of their time on other work is contended: its latency
# says as much about the neighbour as about the code, and no verdict rests on it.
CONTENDED_SHARE = 0.10
# Each end of a window may be off by a tick per core: the share leaves that much out.
QUANTUM_TICKS = 2
CONTENDED = "inconclusive (contended)"

_BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (guest time is inside user)
_STEAL_FIELD = 7


def _tick_s() -> float:
    return 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Reading:
    """Contention over one timed window."""

    wall_s: float
    cores: int
    other_s: float  # other processes' CPU time on the cores
    steal_s: float  # time the hypervisor gave the cores to another guest
    involuntary_switches: int  # of this process's threads

    @property
    def share(self) -> float:
        """Others' work and steal as a share of the cores' capacity over the window (0 to 1), less the
        counters' rounding: what surely went elsewhere."""
        if self.wall_s <= 0:
            return 0.0
        surely = self.other_s + self.steal_s - QUANTUM_TICKS * _tick_s() * self.cores
        return min(1.0, max(0.0, surely) / (self.wall_s * self.cores))

    @property
    def contended(self) -> bool:
        return is_contended(self.share)

    def as_notes(self) -> dict:
        return {"other_cpu_s": round(self.other_s, 4), "steal_s": round(self.steal_s, 4), "cores": self.cores,
                "involuntary_switches": self.involuntary_switches, "window_s": round(self.wall_s, 4)}


def is_contended(share: float | None) -> bool:
    """Whether a window with this contention share is contended (``None``: not measured, so not marked)."""
    return share is not None and share > CONTENDED_SHARE


def _cpu_times(cores: list[int]) -> tuple[float, float] | None:
    """Busy and steal seconds of ``cores`` since boot; ``None`` without ``/proc/stat``."""
    try:
        with open("/proc/stat") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{core}" for core in cores}
    busy = steal = 0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            numbers = [int(v) for v in values]
            busy += sum(numbers[i] for i in _BUSY_FIELDS)
            steal += numbers[_STEAL_FIELD] if len(numbers) > _STEAL_FIELD else 0
    return busy * _tick_s(), steal * _tick_s()


def _own_cpu_s() -> float:
    """This process's CPU time, every thread (ended ones included), in the units ``/proc/stat`` counts."""
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _tick_s()  # utime, stime (fields 14 and 15 of the file)


def _involuntary_switches() -> int:
    total = 0
    for path in glob.glob("/proc/self/task/*/status"):
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith("nonvoluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:  # the thread ended while we read
            continue
    return total


class Watch:
    """Started at the start of a timed window; :meth:`reading` at its end gives the window's :class:`Reading`."""

    def __init__(self):
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.start = self._snapshot()

    def _snapshot(self):
        times = _cpu_times(self.cores) if self.cores else None
        if times is None:
            return None
        return time.perf_counter(), times, _own_cpu_s(), _involuntary_switches()

    def reading(self) -> Reading | None:
        end = self._snapshot()
        if self.start is None or end is None:
            return None
        (wall0, (busy0, steal0), own0, switches0), (wall1, (busy1, steal1), own1, switches1) = self.start, end
        other = max(0.0, (busy1 - busy0) - (own1 - own0))
        return Reading(wall1 - wall0, len(self.cores), other, max(0.0, steal1 - steal0), max(0, switches1 - switches0))
