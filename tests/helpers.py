"""Shared test helpers: a configuration for measuring single cases quickly, a plug-in that kills its process."""

from __future__ import annotations

import dataclasses
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
