"""Execute a sweep into a run directory: calibrate, run each case, append each record.

Everything the ``run`` command does, callable from Python. A Ctrl-C stops
after the case in flight with every finished case already on disk.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from cmgm_bench import ceilings, env, memory
from cmgm_bench.cases import Case, Sweep
from cmgm_bench.errors import UsageError
from cmgm_bench.runner import CaseRunner, RunOptions
from cmgm_bench.store import RunWriter


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (torch %s)" % torch.__version__)
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device: unknown device {device!r} (choose from cpu, cuda, auto)")
    return device


def default_run_dir(device: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{stamp}-{device}"


def configure_threads(threads: int | None) -> int:
    if threads is not None:
        if threads <= 0:
            raise UsageError(f"--threads: {threads} must be positive")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass
class Plan:
    """A validated sweep, ready to run: nothing has been written yet."""

    sweep: Sweep
    cases: list[Case]
    options: RunOptions
    out_dir: Path


def run_plan(
    plan: Plan,
    argv: list[str] | None = None,
    on_case_start: Callable[[Case, int], None] | None = None,
    on_case_done: Callable[[Case, dict], None] | None = None,
) -> RunWriter:
    """Run every case of ``plan``; raises ``KeyboardInterrupt`` after saving if interrupted."""
    memory.pin_allocator_for_timing()
    devices = sorted({case.device for case in plan.cases})
    meta = {
        "environment": env.collect(devices[0] if devices else "cpu", argv),
        "sweep": {k: list(v) for k, v in asdict(plan.sweep).items()},
        "options": {**asdict(plan.options), "stop_rule": asdict(plan.options.stop_rule)},
        "ceilings": {
            device: ceilings.measure(device, {c.dtype for c in plan.cases if c.device == device}) for device in devices
        },
    }
    writer = RunWriter(plan.out_dir, meta)
    runners = {device: CaseRunner(plan.options, meta["ceilings"][device]) for device in devices}
    for index, case in enumerate(plan.cases):
        if on_case_start:
            on_case_start(case, index)
        record = runners[case.device].run(case)
        writer.append(record)
        if on_case_done:
            on_case_done(case, record)
    return writer


def argv() -> list[str]:
    return ["cmgm-bench", *sys.argv[1:]]
