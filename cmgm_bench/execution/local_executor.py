"""The local executor: each case in this process, or in a child process of its own (``--isolate``, another
allocator, or after the CUDA context failed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import torch

from cmgm_bench.config.cases import Case
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.execution.executor import Finished
from cmgm_bench.execution.isolate import run_isolated
from cmgm_bench.machine import env
from cmgm_bench.measure import allocator, failures


class LocalExecutor:
    """Each case in order, here or in a fresh process.

    A case that fails on CUDA in this process may leave the CUDA context unusable (an illegal address, a
    device-side assert: the error is sticky), and every later case in the process would fail with it; the
    executor then says so once and runs the rest each in a fresh process, as ``--isolate`` does."""

    def __init__(self, config: RunConfig, out_dir: Path | None, runners: dict, dtypes: dict | None = None):
        self.isolate = config.isolate
        self.runners = runners

    def measurements(self, cases: list[Case], on_case_start=None) -> Iterator[Finished]:
        unusable: set[str] = set()  # devices whose context in this process failed
        for index, case in enumerate(cases):
            if on_case_start:
                on_case_start(case, index)
            runner = self.runners[case.device]
            own_process = self.isolate or case.allocator != allocator.current() or case.device in unusable
            measurement = run_isolated(case, runner, torch.get_num_threads()) if own_process else runner.run(case)
            notes = dict(measurement.notes)
            if not own_process and not measurement.timed and not failures.device_usable(case.device):
                unusable.add(case.device)
                notes["device_context"] = "unusable after this case; later cases ran each in a fresh process"
                print(f"warning: the {case.device} context failed with {case.impl} {case.mode} {case.shape_label} "
                      f"({measurement.error}); the remaining cases run each in a fresh process", file=sys.stderr)
            yield Finished(case, measurement.with_(host=env.host_description(case.device), notes=notes))
