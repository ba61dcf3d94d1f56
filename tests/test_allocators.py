"""`run --allocator`: the CPU allocator as a sweep dimension. Cases under another allocator than the default
run in a process started with it (jemalloc and tcmalloc really preloaded), the case key carries it, and runs
are compared and stored per allocator."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.config.cases import Case
from cmgm_bench.history.runs import case_key
from cmgm_bench.measure import allocator
from cmgm_bench.results.store import load_run
from tests.helpers import FAST, require_tool, write_file

runner = CliRunner()
pytestmark = pytest.mark.slow  # each test reads runs made in processes of their own

ENV_PROBE = """
import json, os
from cmgm_bench.registry import register

@register("envprobe", description="records its process's allocator settings at build", modes=("fwd",))
def build(module, case):
    with open({path!r} + "." + case.allocator, "w") as handle:
        json.dump({{"thp": os.environ.get("THP_MEM_ALLOC_ENABLE"), "preload": os.environ.get("LD_PRELOAD"),
                    "pid": os.getpid()}}, handle)
    return lambda x, y: module(x, y)
"""


@pytest.fixture(scope="module")
def every_allocator(tmp_path_factory):
    for name in allocator.PRELOADED:
        require_tool(allocator.missing(name))
    root = tmp_path_factory.mktemp("allocators")
    probe = write_file(root, "envprobe.py", ENV_PROBE.format(path=str(root / "seen")))
    out = root / "run"
    result = runner.invoke(app, ["run", "--impl-file", str(probe), "--impl", "envprobe", "--res", "5", "--heads", "2", "--dim", "16",
                                 "--threads", "1", *FAST, "--allocator", "pinned,system,jemalloc,tcmalloc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return root, out


def test_each_allocator_runs_in_a_process_started_with_it(every_allocator):
    import os

    root, out = every_allocator
    frame = pd.read_csv(out / "results.csv").set_index("allocator")
    assert list(frame.index) == ["pinned", "system", "jemalloc", "tcmalloc"] and (frame.status == "ok").all()
    seen = {name: json.loads((root / f"seen.{name}").read_text()) for name in frame.index}
    assert seen["pinned"]["pid"] == os.getpid() and seen["pinned"]["thp"] == "1"  # the run's own, tuned process
    assert seen["system"]["pid"] != os.getpid() and seen["system"]["thp"] is None and seen["system"]["preload"] is None
    for name, (library, _) in allocator.PRELOADED.items():
        assert seen[name]["preload"].endswith(library) and seen[name]["thp"] is None
    notes = {m.case.allocator: m.notes for m in load_run(out).measurements}
    assert notes["jemalloc"]["allocator"] == "jemalloc: as a plain process has it"  # the child found the library mapped
    # a plain process's heap is shaped by the implementation alone: the float64 reference comes after the samples
    phases = {name: list(note["phase_s"]) for name, note in notes.items()}
    assert phases["pinned"].index("reference") < phases["pinned"].index("sampling")
    assert all(phases[name].index("reference") > phases[name].index("sampling") for name in ("system", "jemalloc", "tcmalloc"))
    assert frame.out_rel_err.notna().all() and (frame.accuracy_scope == "full").all()
    # peak memory is measured through glibc's thresholds: under the pinned allocator only
    assert frame.peak_mem_mb["pinned"] > 0 and frame.peak_mem_mb[["system", "jemalloc", "tcmalloc"]].isna().all()


def test_the_report_compares_the_allocators(every_allocator):
    _, out = every_allocator
    report = (out / "report.md").read_text()
    section = report.split("## Allocators")[1].split("##")[0]
    assert "| envprobe | cpu fwd | B1 16x5x5 h2 |" in section and "jemalloc ms (/ pinned)" in section and "(x" in section


def test_compare_judges_each_allocator_against_the_same_allocator(every_allocator, tmp_path):
    _, out = every_allocator
    result = runner.invoke(app, ["compare", str(out), str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    cases = json.loads(result.output)["cases"]
    assert sorted(case["allocator"] for case in cases) == ["jemalloc", "pinned", "system", "tcmalloc"]
    pinned_only = tmp_path / "pinned"
    assert runner.invoke(app, ["run", "--impl", "eager", "--res", "5", "--heads", "2", "--dim", "16", "--threads", "1", *FAST,
                               "--no-report", "--out", str(pinned_only)]).exit_code == 0
    system_only = tmp_path / "system"
    assert runner.invoke(app, ["run", "--impl", "eager", "--res", "5", "--heads", "2", "--dim", "16", "--threads", "1", *FAST,
                               "--no-report", "--allocator", "system", "--out", str(system_only)]).exit_code == 0
    refused = runner.invoke(app, ["compare", str(pinned_only), str(system_only)])
    assert refused.exit_code == 2 and "share no case" in refused.stderr  # never a pinned case against a system one


def test_a_missing_allocator_is_unsupported_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator, "library_path", lambda name: None)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "5", "--heads", "2", "--dim", "16", "--threads", "1", *FAST,
                                 "--no-report", "--allocator", "jemalloc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = pd.read_csv(out / "results.csv").to_dict("records")
    assert row["status"] == "unsupported" and row["error"] == "jemalloc: libjemalloc.so.2 is not installed (apt-get install libjemalloc2)"


def test_allocator_values_and_executors_are_checked():
    bad = runner.invoke(app, ["run", "--allocator", "mimalloc"])
    assert bad.exit_code == 2 and "--allocator: unknown value 'mimalloc'" in bad.stderr
    remote = runner.invoke(app, ["run", "--allocator", "system", "--executor", "ray"])
    assert remote.exit_code == 2 and "only the pinned allocator runs with --executor ray" in remote.stderr


def test_older_runs_were_timed_under_the_pinned_allocator():
    row = {"impl": "eager", "device": "cpu", "dtype": "float32", "mode": "fwd", "batch": 1, "height": 5, "width": 5, "heads": 2, "dim": 16}
    case = Case.from_dict(row)
    assert case.allocator == "pinned" and case.label == "eager cpu fwd B1 16x5x5 h2"
    assert case_key({**row, "threads": 1}) == case_key({**row, "threads": 1, "allocator": "pinned"})  # history goes on
    assert case_key({**row, "threads": 1, "allocator": "jemalloc"}).endswith("t1 [jemalloc]")
    assert Case.from_dict({**row, "allocator": "system"}).label.endswith("[system]")
