"""Memory that means the same for every implementation: what building keeps (``resident_mb``) beside what a call
adds (``peak_mem_mb``), measured on real implementations; compared and stored as two figures."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench import registry
from cmgm_bench.analysis.compare import compare_runs
from cmgm_bench.cli import app
from cmgm_bench.results.store import RunWriter, load_run, read_journal
from tests.helpers import FAST, require_tool

runner = CliRunner()
# each test reads runs made in processes of their own; one xdist worker runs them all, so the module's run is made once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resident_memory")]
SHAPE = ["--res", "28", "--threads", "1", *FAST, "--no-report"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """eager, fused, ONNX Runtime and OpenVINO at PGNet's 28x28, each case in a fresh process (``run``), and the two
    runtimes once more, each in another fresh process (``again``)."""
    for name in ("onnxruntime", "openvino"):
        require_tool(registry.get(name).missing())
    root = tmp_path_factory.mktemp("resident")
    for name, impls in (("run", "eager,fused,onnxruntime,openvino"), ("again", "onnxruntime,openvino")):
        result = runner.invoke(app, ["run", "--impl", impls, *SHAPE, "--isolate", "--out", str(root / name)])
        assert result.exit_code == 0, result.output
    return root / "run"


def test_every_implementation_holds_or_adds_memory(measured):
    frame = pd.read_csv(measured / "results.csv").set_index("impl")
    assert (frame.status == "ok").all(), frame.error
    total = frame.resident_mb + frame.peak_mem_mb
    assert (total > 0).all(), total
    # OpenVINO plans its buffers when it compiles: a call adds almost nothing, what it keeps is of the order of
    # the activations (the analytic estimate of a call's transient memory)
    assert frame.peak_mem_mb["openvino"] < 0.1 * frame.est_mem_mb["openvino"]
    assert frame.resident_mb["openvino"] > 0.5 * frame.est_mem_mb["openvino"]
    # eager keeps its weights (64 channels: well under a MiB) and little else; its call allocates the activations
    assert frame.resident_mb["eager"] < 8 and frame.peak_mem_mb["eager"] > 0.5 * frame.est_mem_mb["eager"]
    # ONNX Runtime and OpenVINO run the same ONNX graph: with ONNX Runtime's memory pattern (a second plan of every
    # buffer beside its arena) it needed several times OpenVINO's memory; without, about the same
    assert total["onnxruntime"] < 1.5 * total["openvino"] and total["openvino"] < 1.5 * total["onnxruntime"], total


def test_the_resident_figure_repeats_from_process_to_process(measured):
    values: dict[str, list[float]] = {}
    for run in (measured, measured.parent / "again"):
        for record in read_journal(run / "cases.jsonl"):
            values.setdefault(record["row"]["impl"], []).append(record["row"]["resident_mb"])
    for impl in ("onnxruntime", "openvino"):
        first, second = values[impl]
        assert abs(first - second) <= 0.02 * max(first, second), (impl, first, second)


def test_compare_judges_both_figures_and_older_runs_on_the_peak(measured, tmp_path):
    run = load_run(measured)

    def copy(name, **scale):
        measurements = [dataclasses.replace(m, **{field: None if factor is None else getattr(m, field) * factor
                                                  for field, factor in scale.items()}) for m in run.measurements]
        RunWriter(tmp_path / name, run.meta, measurements).finish()
        return load_run(tmp_path / name)

    grown = compare_runs(run, copy("grown", resident_mb=1.5))
    regressed = {case.key[0] for case in grown.cases if case.memory_regressed}
    assert regressed == {"onnxruntime", "openvino", "fused"} or regressed == {"onnxruntime", "openvino"}  # eager's growth is below 1 MiB
    assert all(case.resident_ratio == pytest.approx(1.5) for case in grown.cases if case.key[0] in regressed)
    older = copy("older", resident_mb=None)
    judged = compare_runs(run, older)
    assert judged.without_resident == 4 and not any(case.memory_regressed for case in judged.cases)
    shown = runner.invoke(app, ["compare", str(measured), str(tmp_path / "older")])
    assert shown.exit_code == 0 and "4 case(s) compared on peak memory only" in " ".join(shown.output.split())


def test_an_older_history_database_gains_the_column_and_stores_both(measured, tmp_path):
    db = tmp_path / "old.sqlite"
    assert runner.invoke(app, ["history", "add", str(measured), "--db", str(db)]).exit_code == 0
    with sqlite3.connect(db) as connection:  # as a database made before the column existed
        connection.execute("ALTER TABLE cases DROP COLUMN resident_mb")
    again = tmp_path / "again"
    assert runner.invoke(app, ["run", "--impl", "eager", *SHAPE, "--out", str(again)]).exit_code == 0
    assert runner.invoke(app, ["history", "add", str(again), "--db", str(db)]).exit_code == 0
    shown = runner.invoke(app, ["history", "show", "--db", str(db), "--metric", "resident", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    points = json.loads(shown.output)
    stored = load_run(again).measurements[0].resident_mb
    assert [p["resident"] for p in points] == [pytest.approx(stored)]  # the older rows have no value: not shown
