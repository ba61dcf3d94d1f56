"""The executor interface: how a sweep's cases are measured, in this process, on Ray or as Slurm jobs.

An executor is built once per run from the configuration, the run directory, a
:class:`~cmgm_bench.measure.case_runner.CaseRunner` per device (its configuration and
ceilings; remote executors also use it to record a case that never came back) and the
run's dtypes per device (the ceilings a remote worker measures). It yields each case
as soon as it is back, in any order, as :class:`Finished`: the measurement, and the
ceilings of the machine a remote worker measured it on; the sweep stores those and
appends the measurement to the journal.
The configuration was validated once (:class:`~cmgm_bench.config.run_config.RunConfig`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Protocol

from cmgm_bench.config.cases import Case
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.measure.ceilings import Ceilings
from cmgm_bench.measure.measurement import Measurement

# --executor NAME -> "module:class"; a remote executor's module imports its cluster library only when chosen
EXECUTORS = {
    "local": "cmgm_bench.execution.local_executor:LocalExecutor",
    "ray": "cmgm_bench.execution.ray_executor:RayExecutor",
    "slurm": "cmgm_bench.execution.slurm_executor:SlurmExecutor",
}


class Finished(NamedTuple):
    """A case back from an executor."""

    case: Case
    measurement: Measurement
    ceilings: Ceilings | None = None  # a remote worker's: the ceilings of the machine the case ran on


class Executor(Protocol):
    def measurements(self, cases: list[Case], on_case_start: Callable[[Case, int], None] | None = None
                     ) -> Iterator[Finished]:
        """Measure ``cases``; yield each as it finishes (``on_case_start(case, index)`` as one starts)."""


def executor_for(config: RunConfig, out_dir: Path, runners: dict, dtypes: dict) -> Executor:
    """The executor ``config.executor`` names, set up for one run into ``out_dir``."""
    module, name = EXECUTORS[config.executor].split(":")
    return getattr(importlib.import_module(module), name)(config, out_dir, runners, dtypes)
