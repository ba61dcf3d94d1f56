"""Contention: what else the cores did while a case or a race was timed, measured beside a real busy process,
and no verdict resting on a contended measurement."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from typer.testing import CliRunner

from cmgm_bench.analysis.compare import compare_runs
from cmgm_bench.cli import app
from cmgm_bench.config.cases import Case
from cmgm_bench.measure import contention
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.results.store import RunWriter, load_run
from cmgm_bench.stats import StopRule
from tests.helpers import measure_config

runner = CliRunner()
TWO_THREADS = Case("eager", "cpu", "float32", "fwd", 1, 8, 8, 2, 16)


def others_cpu_s() -> float:
    """CPU time of every other process on the machine (with the children they waited for), read per process: a
    count independent of the per-CPU counters the tool reads."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # ended while we read
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def timed_case(threads: int = 2):
    """Measure TWO_THREADS with ``threads`` threads for about half a second of samples."""
    import torch

    torch.set_num_threads(threads)
    config = measure_config(StopRule(min_samples=10, max_time_s=0.5, target_rel_iqr=0.0), memory=False)
    return CaseRunner(config).run(TWO_THREADS)


def test_the_share_leaves_out_the_counters_rounding():
    tick = 1 / os.sysconf("SC_CLK_TCK")
    busy = contention.Reading(wall_s=1.0, cores=2, other_s=0.5, steal_s=0.1, involuntary_switches=40)
    assert busy.share == pytest.approx((0.6 - contention.QUANTUM_TICKS * tick * 2) / 2)
    assert busy.contended
    rounding = contention.Reading(wall_s=0.05, cores=2, other_s=2 * tick, steal_s=0.0, involuntary_switches=0)
    assert rounding.share == 0.0 and not rounding.contended  # a tick per core at each end is not a neighbour
    assert not contention.is_contended(None)  # not measured is not marked
    assert contention.is_contended(contention.CONTENDED_SHARE + 0.01) and not contention.is_contended(contention.CONTENDED_SHARE)


def test_a_busy_neighbour_on_one_core_marks_a_two_thread_case(busy_neighbour):
    measured = timed_case(threads=2)
    assert measured.status.value == "ok", measured.error
    # the spinning process has at least half of its core while the case's threads share it (the scheduler's fair share)
    cores = measured.notes["contention"]["cores"]
    assert measured.contention >= 0.5 / cores - 0.05 and measured.contended
    assert measured.notes["contention"]["other_cpu_s"] >= 0.5 * measured.notes["contention"]["window_s"]


def test_the_cases_own_threads_are_never_counted_as_contention():
    """With or without other work on the machine, what the tool calls other work during the timed window is no
    more than what every other process did during the whole case, counted per process."""
    before = others_cpu_s()
    measured = timed_case(threads=2)
    others = others_cpu_s() - before
    recorded = measured.notes["contention"]
    assert measured.status.value == "ok", measured.error
    # the case's two threads kept both cores busy: counting them would exceed the others' time by about that much
    slack = 0.05 + contention.QUANTUM_TICKS * 2 / os.sysconf("SC_CLK_TCK")
    assert recorded["other_cpu_s"] <= 1.15 * others + slack, (recorded, others)
    if others < 0.02 * recorded["window_s"]:  # a quiet machine: nothing marked
        assert not measured.contended


@pytest.mark.slow
def test_run_fail_on_contention_exits_1_beside_a_busy_process(tmp_path, busy_neighbour):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "8", "--heads", "2", "--dim", "16", "--threads", "2",
                                 "--max-time", "0.5", "--no-report", "--fail-on-contention", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "contended" in result.output and "1 case(s) contended" in result.output
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    assert case["row"]["contention"] > contention.CONTENDED_SHARE


def test_ab_beside_a_busy_process_decides_nothing(busy_neighbour):
    result = runner.invoke(app, ["ab", "eager", "eager", "--res", "8", "--heads", "2", "--dim", "16", "--threads", "2",
                                 "--max-time", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["verdict"] == contention.CONTENDED
    assert float(row["contention"].rstrip("%")) / 100 > contention.CONTENDED_SHARE


@pytest.mark.slow
def test_compare_gives_no_verdict_on_a_contended_case(tmp_path):
    """A candidate twice as slow is 'slower' when both sides were quiet, 'inconclusive (contended)' when either was not."""
    out = tmp_path / "base"
    assert runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--threads", "1", "--max-time", "0.2", "--no-report",
                               "--out", str(out)]).exit_code == 0
    base = load_run(out)
    samples = tuple(1e-3 * (1 + 0.01 * (i % 7)) for i in range(60))  # steady, so the doubling is decided

    def copy(name, scale, share):
        measurements = [dataclasses.replace(m, samples_s=tuple(s * scale for s in samples), contention=share) for m in base.measurements]
        RunWriter(tmp_path / name, base.meta, measurements).finish()
        return load_run(tmp_path / name)

    quiet, slower = copy("quiet", 1.0, 0.0), copy("slower", 2.0, 0.0)
    assert [c.verdict for c in compare_runs(quiet, slower, run_spread=1.0).cases] == ["slower"]
    busy = copy("busy", 2.0, 0.4)
    assert [c.verdict for c in compare_runs(quiet, busy, run_spread=1.0).cases] == [contention.CONTENDED]
    assert [c.verdict for c in compare_runs(busy, quiet, run_spread=1.0).cases] == [contention.CONTENDED]
    shown = runner.invoke(app, ["compare", str(tmp_path / "quiet"), str(tmp_path / "busy"), "--fail-on-regression"])
    assert shown.exit_code == 0 and "timed beside other work" in shown.output
