"""Shared test helpers: a configuration for measuring single cases quickly, a plug-in that kills its process,
the checks of ceilings that remote executors' workers measure."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

from cmgm_bench.stats import StopRule
from cmgm_bench.config.run_config import RunConfig

ONE_SAMPLE = StopRule(min_samples=1, max_time_s=0.0, floor_samples=1)


def measure_config(stop_rule: StopRule = ONE_SAMPLE, **changes) -> RunConfig:
    """A :class:`RunConfig` for a :class:`CaseRunner` in a test: ``stop_rule`` and the measuring fields given."""
    return dataclasses.replace(RunConfig.build(impl="eager"), stop_rule=stop_rule, **changes)


def killer_impl_file(directory: Path, attempts: Path) -> Path:
    """A plug-in file registering ``killer``, whose build appends its process id to ``attempts`` and then
    SIGKILLs its own process: a worker or job that dies during a case."""
    path = directory / "killer.py"
    path.write_text(textwrap.dedent(f"""
        import os, signal
        from cmgm_bench.registry import register

        @register("killer", description="kills its process while building", modes=("fwd",))
        def build(module, case):
            with open({str(attempts)!r}, "a") as handle:
                handle.write(str(os.getpid()) + "\\n")
            os.kill(os.getpid(), signal.SIGKILL)
        """))
    return path


def not_in_the_driver(*args, **kwargs):
    """Stands in for ``ceilings.measure`` in a driver process, where a remote executor must not call it."""
    raise AssertionError("a remote executor's driver measured ceilings")


def assert_ceilings_from_the_workers(run_dir, measured):
    """The ceilings in results.json were measured on the cases' machine, by a worker, and every case has its share."""
    stored = json.loads((run_dir / "results.json").read_text())["ceilings"]["cpu"]
    assert stored["machine"] == measured[0].machine and stored["matmul_gflops"]["float32"] > 1 and stored["copy_gbytes_per_s"] > 0.1
    assert all("ceilings" not in m.notes for m in measured)  # moved to the metadata, not repeated per case
    assert sum("ceilings_s" in m.notes for m in measured) >= 1  # at least one worker measured them, and said how long
    assert all(0 < m.pct_peak <= 100 for m in measured)
