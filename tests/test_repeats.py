"""`run --repeats K`: replicates in rounds, one row per case, resume by replicate; `compare` over replicates,
and the run-to-run widening of single-replicate intervals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench.analysis.compare import ONE_REPLICATE, compare_runs
from cmgm_bench.cli import app
from cmgm_bench.measure.contention import CONTENDED
from cmgm_bench.results.store import RunWriter, load_run, read_journal
from cmgm_bench.stats import replicate_ratio_interval
from tests.helpers import FAST

runner = CliRunner()
SWEEP = ["--impl", "eager,sdpa", "--res", "4", "--threads", "1", "--no-report", *FAST]


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    out = tmp_path_factory.mktemp("repeats") / "run"
    result = runner.invoke(app, ["run", *SWEEP, "--repeats", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_replicates_run_in_rounds_and_make_one_row_per_case(repeated):
    journal = [record["row"]["impl"] for record in read_journal(repeated / "cases.jsonl")]
    assert journal == ["eager", "sdpa"] * 3  # round by round, not eager three times then sdpa
    frame = pd.read_csv(repeated / "results.csv")
    assert list(frame.impl) == ["eager", "sdpa"]
    for m in load_run(repeated).measurements:
        assert m.replicates == 3 and len(m.replicate_samples) == 3
        assert all(len(group) >= 3 for group in m.replicate_samples)
        assert sum(map(len, m.replicate_samples)) == len(m.samples_s) == frame.set_index("impl").samples[m.case.impl]


@pytest.mark.slow
def test_resume_runs_only_the_missing_replicates(repeated, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    lines = (repeated / "cases.jsonl").read_text().splitlines(keepends=True)
    (copy / "cases.jsonl").write_text("".join(lines[:4]))  # killed in the third round
    (copy / "run.json").write_text((repeated / "run.json").read_text())
    result = runner.invoke(app, ["run", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    after = (copy / "cases.jsonl").read_text().splitlines(keepends=True)
    assert after[:4] == lines[:4] and len(after) == 6
    assert [m.replicates for m in load_run(copy).measurements] == [3, 3]
    more = runner.invoke(app, ["run", "--resume", str(copy), "--repeats", "4"])  # a fourth round, added later
    assert more.exit_code == 0, more.output
    assert [m.replicates for m in load_run(copy).measurements] == [4, 4]
    fewer = runner.invoke(app, ["run", "--resume", str(copy), "--repeats", "2"])
    assert fewer.exit_code == 2 and "more replicates than --repeats 2" in fewer.output


def scaled(run_dir, out, scale: float, per_replicate=None):
    """``run_dir`` with every sample times ``scale`` (and replicate r's times ``per_replicate[r]``), as a new run
    made on a quiet machine (the statistics are under test here, not the machine)."""
    run = load_run(run_dir)
    measurements = []
    for m in run.measurements:
        factors = per_replicate or [1.0] * m.replicates
        samples = [s * scale * factors[r] for r, group in enumerate(m.replicate_samples) for s in group]
        measurements.append(dataclasses.replace(m, samples_s=tuple(samples), contention=0.0))
    RunWriter(out, run.meta, measurements).finish()
    return load_run(out)


def steady(run_dir, out):
    """``run_dir`` with every replicate's samples replaced by the first replicate's: replicates that agree, on a
    quiet machine."""
    run = load_run(run_dir)
    measurements = [dataclasses.replace(m, samples_s=tuple(m.replicate_samples[0]) * m.replicates, contention=0.0,
                                        replicate_sizes=[len(m.replicate_samples[0])] * m.replicates)
                    for m in run.measurements]
    RunWriter(out, run.meta, measurements).finish()
    return out


@pytest.mark.slow
def test_compare_judges_replicated_runs_over_their_replicates(repeated, tmp_path):
    base_dir = steady(repeated, tmp_path / "base")
    base = load_run(base_dir)
    same = compare_runs(base, scaled(base_dir, tmp_path / "same", 1.0), threshold=0.05)
    assert same.replicated_cases == 2 and [c.verdict for c in same.cases] == ["same", "same"]
    slower = compare_runs(base, scaled(base_dir, tmp_path / "slow", 1.2), threshold=0.05)
    assert [c.verdict for c in slower.cases] == ["slower", "slower"]
    assert all(c.ratio == pytest.approx(1.2, rel=1e-6) for c in slower.cases)
    # one slow replicate in the candidate (a slow period of the machine): the interval takes it in
    swing = compare_runs(base, scaled(base_dir, tmp_path / "swing", 1.0, [1.0, 2.0, 1.0]), threshold=0.05)
    assert {c.verdict for c in swing.cases} == {"inconclusive"}
    assert all(c.high > 1.5 for c in swing.cases)
    # the real run against itself, its replicates as they came: never a confident verdict
    assert {c.verdict for c in compare_runs(load_run(repeated), load_run(repeated)).cases} <= {"same", "inconclusive", CONTENDED}


@pytest.mark.slow
def test_compare_says_when_replicates_shared_a_process(repeated, tmp_path):
    """In-process replicates miss what differs between processes (docs/performance.md#page-faults): compare says so
    and points to --isolate; with every replicate in a child process of its own it has nothing to warn about."""
    shown = runner.invoke(app, ["compare", str(repeated), str(repeated)])
    assert shown.exit_code == 0, shown.output
    assert compare_runs(load_run(repeated), load_run(repeated)).shared_process_cases == 2
    assert "2 of them with replicates that shared one process" in shown.output and "--isolate" in shown.output
    isolated = tmp_path / "isolated"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--threads", "1", "--no-report", *FAST,
                                 "--repeats", "2", "--isolate", "--out", str(isolated)])
    assert result.exit_code == 0, result.output
    judged = compare_runs(load_run(isolated), load_run(isolated))
    assert judged.replicated_cases == 1 and judged.shared_process_cases == 0
    assert "shared one process" not in runner.invoke(app, ["compare", str(isolated), str(isolated)]).output


def test_a_single_replicate_is_widened_by_the_run_to_run_spread(tmp_path):
    measured = tmp_path / "measured"
    assert runner.invoke(app, ["run", *SWEEP, "--out", str(measured)]).exit_code == 0
    # steady samples (the real ones swing with the machine), so that only the widening decides
    steady_samples = tuple(1e-3 * (1 + 0.01 * (i % 5)) for i in range(40))
    run = load_run(measured)
    out = tmp_path / "one"
    RunWriter(out, run.meta, [dataclasses.replace(m, samples_s=steady_samples, contention=0.0) for m in run.measurements]).finish()
    base = load_run(out)
    slower = scaled(out, tmp_path / "slower", 1.3)
    widened = compare_runs(base, slower, threshold=0.05)
    assert widened.run_spread == 3.0 and widened.replicated_cases == 0
    assert [c.verdict for c in widened.cases] == [ONE_REPLICATE] * 2
    assert [c.verdict for c in compare_runs(base, slower, threshold=0.05, run_spread=1.0).cases] == ["slower"] * 2
    assert [c.verdict for c in compare_runs(base, scaled(out, tmp_path / "x5", 5.0), threshold=0.05).cases] == ["slower"] * 2
    shown = runner.invoke(app, ["compare", str(out), str(tmp_path / "slower"), "--format", "json"])
    assert shown.exit_code == 0 and {c["verdict"] for c in json.loads(shown.output)["cases"]} == {ONE_REPLICATE}
    assert runner.invoke(app, ["compare", str(out), str(tmp_path / "slower"), "--run-spread", "0.5"]).exit_code == 2


def test_the_replicate_interval_covers_the_truth_in_simulated_a_a_pairs():
    """Three replicates a side, each at a level lognormal(0, 0.2) (slow and fast periods): >= 93 % of 300 cover 1."""
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(300):
        base, cand = ([rng.lognormal(rng.normal(0, 0.2), 0.05, 40) for _ in range(3)] for _ in range(2))
        _, low, high = replicate_ratio_interval(base, cand)
        covered += low <= 1 <= high
    assert covered >= 0.93 * 300
    steady = [rng.lognormal(0, 0.02, 40) for _ in range(3)]
    ratio, low, high = replicate_ratio_interval(steady, [g * 1.2 for g in steady])
    assert ratio == pytest.approx(1.2) and 1.15 < low < 1.2 < high < 1.25  # a 20 % slowdown over steady replicates: decided
