"""Profile one case under ``torch.profiler``: top operators, a Chrome/Perfetto trace, the memory peak."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cmgm_bench.workload.modes import autograd_context
from cmgm_bench.measure.quiet import native_stderr_silenced
from cmgm_bench.measure.prepare import PreparedCase
from cmgm_bench.measure.timing import clock_for, warm_up


@dataclass
class OperatorRow:
    name: str
    calls: int
    self_ms: float
    share: float
    input_shapes: str


@dataclass
class Profile:
    operators: list[OperatorRow]
    trace: Path
    total_self_ms: float
    peak_bytes: int | None = None
    peak_operator: str | None = None


def _memory_peak(kineto_events) -> tuple[int, str | None]:
    """Peak of the running sum of allocations (frees are negative) and the innermost operator around it."""
    events = sorted(kineto_events, key=lambda e: e.start_ns())
    running = peak = 0
    peak_time = None
    for event in events:
        if event.name() == "[memory]":
            running += event.nbytes()
            if running > peak:
                peak, peak_time = running, event.start_ns()
    if peak_time is None:
        return 0, None
    around = [  # the allocating primitives themselves (aten::empty...) say nothing about who allocated
        e for e in events
        if e.name() != "[memory]" and not e.name().startswith("aten::empty")
        and e.start_ns() <= peak_time <= e.start_ns() + e.duration_ns()
    ]
    innermost = min(around, key=lambda e: e.duration_ns(), default=None)
    return peak, innermost.name() if innermost else None


def profile_case(prepared: PreparedCase, mode: str, device: str, trace: Path, *, memory: bool = False, top: int = 15,
                 calls: int = 3) -> Profile:
    """Warm up, then profile ``calls`` calls of the case's step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with autograd_context(mode):
        warm_up(prepared.step, clock_for(device))
        with native_stderr_silenced(), profile(activities=activities, record_shapes=True, profile_memory=memory) as prof:
            for _ in range(calls):
                prepared.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
    trace.parent.mkdir(parents=True, exist_ok=True)
    partial = trace.with_name(trace.name + ".partial.json")  # whole or not there: written aside, then renamed
    try:
        prof.export_chrome_trace(str(partial))
        os.replace(partial, trace)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".tmp").unlink(missing_ok=True)  # what the exporter writes first
    averages = [a for a in prof.key_averages(group_by_input_shape=True) if a.key != "[memory]"]
    self_time = lambda a: a.self_device_time_total if device.startswith("cuda") and a.self_device_time_total else a.self_cpu_time_total
    total = sum(self_time(a) for a in averages) or 1.0
    ranked = sorted(averages, key=self_time, reverse=True)[:top]
    rows = [
        OperatorRow(a.key, a.count, self_time(a) / 1e3, self_time(a) / total, str(a.input_shapes)[:80])
        for a in ranked
    ]
    result = Profile(rows, trace, total / 1e3)
    if memory:
        result.peak_bytes, result.peak_operator = _memory_peak(prof.profiler.kineto_results.events())
    return result
