"""`cmgm-bench history`: runs made by the tool into SQLite and PostgreSQL, series, the trend gate, change points, the page.

The history a trend is judged against is made from one real tiny run, copied with a
later start time, another commit and its samples scaled by known factors (through
the results store's own writer), so the verdicts the tests expect are known.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.measure.contention import CONTENDED
from cmgm_bench.history import changepoints
from cmgm_bench.history.trend import judge
from cmgm_bench.results.store import RunWriter, load_run
from tests.helpers import FAST, require_tool

runner = CliRunner()
POSTGRES_ENV = "CMGM_TEST_POSTGRES_URL"


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Two runs made by the tool, one after the other: eager and sdpa, fwd, a 4x4 grid, 1 thread."""
    paths = []
    for index in range(2):
        out = tmp_path_factory.mktemp("runs") / f"run{index}"
        result = runner.invoke(app, ["run", "--impl", "eager,sdpa", "--res", "4", "--threads", "1", "--out", str(out),
                                     "--no-report", *FAST])
        assert result.exit_code == 0, result.output
        paths.append(out)
    return paths


def derived_run(source: Path, out: Path, index: int, scale: float, torch_version: str | None = None,
                contention: float = 0.0) -> Path:
    """``source`` as if run ``index`` hours later at commit ``c<index>``, every sample times ``scale``, on a machine
    whose cores were ``contention`` busy with other work."""
    run = load_run(source)
    environment = dict(run.meta.environment)
    environment.update(start_time=f"2031-01-01T{index:02d}:00:00+00:00", git_commit=f"c{index:039d}", git_branch="main")
    if torch_version:
        environment["torch_version"] = torch_version
    writer = RunWriter(out, dataclasses.replace(run.meta, environment=environment),
                       [dataclasses.replace(m, samples_s=tuple(s * scale for s in m.samples_s), contention=contention)
                        for m in run.measurements])
    writer.finish()
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty history database: a SQLite file, or a new database on the PostgreSQL server of ``$CMGM_TEST_POSTGRES_URL``."""
    if request.param == "sqlite":
        yield str(tmp_path / "history.sqlite")
        return
    server = os.environ.get(POSTGRES_ENV)
    require_tool(None if server else f"${POSTGRES_ENV} (a PostgreSQL server URL; .ci/run starts one)")
    name = f"cmgm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def history(*args: str):
    return runner.invoke(app, ["history", *args])


def shown(db: str, *args: str) -> list[dict]:
    result = history("show", "--db", db, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_add_and_show_real_runs(real_runs, db_url):
    result = history("add", *map(str, real_runs), "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.count("stored as run") == 2
    rows = shown(db_url)
    assert len(rows) == 4  # 2 cases x 2 runs
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    assert set(by_case) == {"eager cpu float32 fwd B1 64x4x4 h8 t1", "sdpa cpu float32 fwd B1 64x4x4 h8 t1"}
    for series in by_case.values():
        assert [r["started_at"] for r in series] == sorted(r["started_at"] for r in series)  # newest last
        assert all(r["latency"] > 0 and r["iqr"] >= 0 for r in series)
        assert {r["commit"] for r in series} == {load_run(real_runs[0]).meta.environment["git_commit"]}
    truth = {m.case.impl: m.latency_ms for m in load_run(real_runs[1]).measurements}
    assert by_case["eager cpu float32 fwd B1 64x4x4 h8 t1"][-1]["latency"] == pytest.approx(truth["eager"])
    assert {r["case"].split()[0] for r in shown(db_url, "--impl", "sdpa")} == {"sdpa"}
    assert shown(db_url, "--res", "5") == []
    memory = shown(db_url, "--metric", "memory")
    stored = {(m.case.impl, run): m.peak_mem_mb for run in real_runs for m in load_run(run).measurements}
    assert len(memory) == 4 and all(value is not None for value in stored.values())
    # a 4x4 case allocates a few KiB, which may all land on pages already resident: 0 MiB is a valid reading
    assert sorted(r["memory"] for r in memory) == pytest.approx(sorted(stored.values()))


@pytest.mark.slow
def test_adding_a_run_twice_stores_it_once(real_runs, db_url):
    assert history("add", str(real_runs[0]), "--db", db_url).exit_code == 0
    again = history("add", str(real_runs[0]), "--db", db_url)
    assert again.exit_code == 0 and "already stored as run 1" in again.output
    assert len(shown(db_url)) == 2


def test_two_runs_of_one_command_in_the_same_second_are_two_runs(real_runs, tmp_path):
    """Runs are fast when their ceilings are reused: the start time (to the second) and the command line no longer
    tell two apart, the run's ``run_uuid`` does; a run from before ``run_uuid`` is still found again."""
    first = load_run(real_runs[0])

    def copy(source: Path, name: str, **environment) -> Path:
        run = load_run(source)
        merged = {key: value for key, value in {**run.meta.environment, **environment}.items() if value is not None}
        RunWriter(tmp_path / name, dataclasses.replace(run.meta, environment=merged), run.measurements).finish()
        return tmp_path / name

    same_second = {key: first.meta.environment[key] for key in ("start_time", "command_line", "hostname", "git_commit")}
    twin = copy(real_runs[1], "twin", **same_second)
    db = f"sqlite:///{tmp_path / 'history.db'}"
    added = history("add", str(real_runs[0]), str(twin), "--db", db)
    assert added.exit_code == 0 and added.output.count("stored as run") == 2, added.output
    older = copy(real_runs[0], "older", run_uuid=None)
    assert "run_uuid" not in load_run(older).meta.environment
    assert history("add", str(older), "--db", db).output.count("stored as run") == 1
    assert "already stored as run 3" in history("add", str(older), "--db", db).output


@pytest.mark.slow
def test_two_processes_adding_at_once_both_land(real_runs, db_url, tmp_path):
    shared = derived_run(real_runs[0], tmp_path / "shared", 99, 1.0)  # both add this one: stored once
    batches = [[*(derived_run(real_runs[0], tmp_path / f"p{p}-{i}", 10 * p + i, 1.0) for i in range(4)), shared] for p in range(2)]
    command = [sys.executable, "-m", "cmgm_bench", "history", "add", "--db", db_url]
    processes = [subprocess.Popen([*command, *map(str, batch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for batch in batches]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert out.count(": stored as run") + out.count("already stored as run") == 5
    assert sum(out.count(": stored as run") for out, _ in outputs) == 9
    rows = shown(db_url)
    assert len(rows) == 18  # 9 runs x 2 cases
    assert len({r["commit"] for r in rows}) == 9


def test_a_database_of_another_schema_version_is_refused(real_runs, tmp_path):
    db = tmp_path / "old.sqlite"
    assert history("add", str(real_runs[0]), "--db", str(db)).exit_code == 0
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    before = db.read_bytes()
    for args in (["show", "--db", str(db)], ["add", str(real_runs[1]), "--db", str(db)]):
        result = history(*args)
        assert result.exit_code == 2
        assert "schema version 99" in result.output and len(result.output.strip().splitlines()) == 1
    assert db.read_bytes() == before


def test_not_a_database_and_bad_input_exit_2(real_runs, tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("shopping list\n" * 100)
    assert history("add", str(real_runs[0]), "--db", str(text)).exit_code == 2
    assert text.read_text() == "shopping list\n" * 100
    assert history("show", "--db", str(tmp_path / "missing.sqlite")).exit_code == 2
    assert not (tmp_path / "missing.sqlite").exists()
    assert history("show", "--db", "nosuchdialect://x").exit_code == 2
    db = str(tmp_path / "h.sqlite")
    assert history("add", str(real_runs[0]), "--db", db).exit_code == 0
    assert history("show", "--db", db, "--metric", "speed").exit_code == 2
    assert history("check", str(real_runs[1]), "--db", db, "--window", "1").exit_code == 2
    assert history("add", str(tmp_path), "--db", db).exit_code == 2  # not a run directory


@pytest.fixture
def judged_history(real_runs, db_url, tmp_path):
    """Six earlier runs of the same cases, samples scaled by 1 +- 2 %, stored; returns the database."""
    for index, scale in enumerate([1.00, 1.02, 0.99, 1.01, 0.98, 1.00]):
        path = derived_run(real_runs[0], tmp_path / f"h{index}", index, scale)
        assert history("add", str(path), "--db", db_url).exit_code == 0
    return db_url


def verdicts(db: str, run: Path, *args: str) -> tuple[int, list[dict]]:
    result = history("check", str(run), "--db", db, "--format", "json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def test_check_flags_a_slower_run_and_passes_an_equal_one(real_runs, judged_history, tmp_path):
    slower = derived_run(real_runs[0], tmp_path / "slower", 20, 1.30)
    code, rows = verdicts(judged_history, slower, "--fail-on-regression")
    assert code == 1 and [r["verdict"] for r in rows] == ["slower", "slower"]
    assert all(r["window"] == 6 and r["change"] == pytest.approx(0.30, abs=0.01) for r in rows)
    equal = derived_run(real_runs[0], tmp_path / "equal", 21, 1.005)
    code, rows = verdicts(judged_history, equal, "--fail-on-regression")
    assert code == 0 and [r["verdict"] for r in rows] == ["same", "same"]
    faster = derived_run(real_runs[0], tmp_path / "faster", 22, 0.70)
    assert [r["verdict"] for r in verdicts(judged_history, faster)[1]] == ["faster", "faster"]
    busy = derived_run(real_runs[0], tmp_path / "busy", 23, 1.30, contention=0.4)  # slower, but beside a neighbour
    code, rows = verdicts(judged_history, busy, "--fail-on-regression")
    assert code == 0 and [r["verdict"] for r in rows] == [CONTENDED, CONTENDED]
    markdown = history("check", str(slower), "--db", judged_history, "--format", "markdown")
    assert markdown.output.startswith("### cmgm-bench: latency against the last 10 runs") and "2 slower" in markdown.output


def test_check_window_and_the_runs_it_may_use(real_runs, judged_history, tmp_path):
    slower = derived_run(real_runs[0], tmp_path / "slower", 20, 1.30)
    assert all(r["window"] == 3 for r in verdicts(judged_history, slower, "--window", "3")[1])
    early = derived_run(real_runs[0], tmp_path / "early", 2, 1.30)  # only runs before it count: two
    assert [r["verdict"] for r in verdicts(judged_history, early)[1]] == ["too little history"] * 2
    other_torch = derived_run(real_runs[0], tmp_path / "torch", 20, 1.30, torch_version="9.9.9")
    rows = verdicts(judged_history, other_torch)[1]
    assert [r["verdict"] for r in rows] == ["too little history"] * 2 and "torch 9.9.9" in rows[0]["note"]
    added = history("add", str(slower), "--db", judged_history)  # a run already stored is not its own history
    assert added.exit_code == 0
    assert [r["verdict"] for r in verdicts(judged_history, slower)[1]] == ["slower", "slower"]


def test_show_marks_a_step_and_a_torch_change(real_runs, db_url, tmp_path):
    scales = [1.0] * 8 + [1.5] * 8
    for index, scale in enumerate(scales):
        torch_version = "2.99.0" if index >= 12 else None
        path = derived_run(real_runs[0], tmp_path / f"s{index}", index, scale * (1 + 0.002 * (index % 3)), torch_version)
        assert history("add", str(path), "--db", db_url).exit_code == 0
    rows = [r for r in shown(db_url, "--impl", "eager") if r["commit"].startswith("c")]
    marks = [r["change"] for r in rows]
    assert marks[8].startswith("step x1.5")
    assert marks[12] == "torch 2.99.0"
    assert all(mark == "" for i, mark in enumerate(marks) if i not in (8, 12))


def _series(rng, length, noise, step_at=None, step=0.10):
    level = np.where(np.arange(length) >= step_at, 1 + step, 1.0) if step_at is not None else np.ones(length)
    return 100 * level * rng.lognormal(0, noise, length)


@pytest.mark.parametrize("noise", [0.001, 0.03])  # instructions; latency on a quiet machine
def test_a_10_percent_step_is_found_within_one_commit(noise):
    rng = np.random.default_rng(7)
    for _ in range(20):
        steps = changepoints.find_steps(_series(rng, 30, noise, step_at=17))
        assert any(abs(s.index - 17) <= 1 and s.ratio == pytest.approx(1.10, abs=0.04) and s.confidence > 0.99 for s in steps), steps


@pytest.mark.parametrize("noise", [0.001, 0.03])
def test_an_a_a_series_has_no_step(noise):
    rng = np.random.default_rng(11)
    assert sum(len(changepoints.find_steps(_series(rng, 30, noise))) for _ in range(30)) == 0


def test_judge_is_the_threshold_alone_for_a_deterministic_metric():
    window = np.full(5, 1_000_000.0)
    assert judge(window, 1_020_000.0, threshold=0.01, confidence=0.99)[0] == "slower"
    assert judge(window, 1_005_000.0, threshold=0.01, confidence=0.99)[0] == "same"
    assert judge(window, 970_000.0, threshold=0.01, confidence=0.99)[0] == "faster"
    noisy = np.array([1.0, 1.3, 0.8, 1.2, 0.9])
    assert judge(noisy, 1.25, threshold=0.05, confidence=0.99)[0] == "same"  # inside the window's spread


def browser_problem() -> str | None:
    if not Path("/usr/bin/chromium").exists():
        return "Debian's chromium (/usr/bin/chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (pip install -e '.[dev]')"
    return None


@pytest.mark.slow
def test_dashboard_page_in_a_headless_browser(real_runs, tmp_path):
    """Twelve runs with a planted 1.5x step at the seventh, then three runs of one commit: in Debian's Chromium the
    page opens on a summary naming the step with its commit, draws one chart per shape and metric with a line per
    implementation, keeps the three runs of one commit apart, plots exactly the stored values, fetches nothing and
    logs no error."""
    require_tool(browser_problem())
    from playwright.sync_api import sync_playwright

    db = str(tmp_path / "h.sqlite")
    for index, scale in enumerate([1.0, 1.01, 0.99, 1.0, 1.02, 1.0, 1.5, 1.5, 1.49, 1.5, 1.51, 1.5]):
        assert history("add", str(derived_run(real_runs[0], tmp_path / f"d{index}", index, scale)), "--db", db).exit_code == 0
    for index in (12, 13, 14):  # three runs of one commit
        path = derived_run(real_runs[0], tmp_path / f"d{index}", index, 1.5 + 0.01 * (index - 13))
        assert history("add", str(path), "--db", db, "--commit", "f" * 40).exit_code == 0
    result = history("html", str(tmp_path / "page"), "--db", db)
    assert result.exit_code == 0, result.output
    page_file = tmp_path / "page" / "index.html"
    assert "https://" not in page_file.read_text().split("<script>", 1)[0]  # nothing fetched: the page works offline
    stored = [r["latency"] for r in shown(db, "--impl", "eager")]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: errors.append(f"fetched {request.url}") if not request.url.startswith(("file:",
            "data:")) else None)
        page.goto(page_file.as_uri())
        # first screen: the summary names the series that changed, with the step's commit, without scrolling
        summary = page.locator("#summary")
        assert summary.bounding_box()["y"] < 900
        changed = summary.locator("tr").all_inner_texts()[1:]
        for impl in ("eager", "sdpa"):
            assert any(row.startswith(f"{impl} cpu float32 fwd B1 64x4x4 h8 t1") and "latency" in row for row in changed), changed
        assert f"c{6:039d}" in summary.locator("span.step").first.get_attribute("title")
        # one chart per shape and metric, a line per implementation
        titles = page.locator("div.chart h3").all_inner_texts()
        assert len(titles) == len(set(titles)) and not any("eager" in t or "sdpa" in t for t in titles)
        latency = page.locator("div.chart", has_text="cpu float32 fwd B1 64x4x4 h8 t1 - latency")
        latency.scroll_into_view_if_needed()
        latency.locator(".js-plotly-plot").wait_for()
        traces = latency.evaluate("e => e.querySelector('.js-plotly-plot').data.map(t => [t.name, t.x, t.y])")
        assert sorted(name for name, _, _ in traces) == ["eager", "sdpa"]
        eager_x, eager_y = next((x, y) for name, x, y in traces if name == "eager")
        assert eager_y == pytest.approx(stored) and len(set(eager_x)) == len(eager_x) == 15  # one commit's 3 runs apart
        page.select_option("select[name=impl]", "sdpa")
        assert latency.evaluate("e => e.querySelector('.js-plotly-plot').data.map(t => t.name)") == ["sdpa"]
        page.select_option("select[name=impl]", "")
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        browser.close()
    assert errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_a_history_command_leaves_no_connection_to_the_database_open(real_runs, tmp_path):
    """Each command closes its connections when it ends: a pooled SQLite connection left behind keeps the file open
    (a read-only remount of its filesystem fails as busy, another writer may wait on it)."""
    db = tmp_path / "h.sqlite"

    def open_files() -> set[str]:
        return {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}

    for args in (["add", str(real_runs[0])], ["show"], ["check", str(real_runs[1])], ["html", str(tmp_path / "page")]):
        result = history(*args, "--db", str(db))
        assert result.exit_code == 0, result.output
        assert str(db.resolve()) not in open_files(), args


def test_a_case_is_filed_under_the_machine_model_it_ran_on(real_runs):
    """One name for a machine model, from the run's environment or the case's host: a case that ran on this run's
    machine joins the run's series, one an executor ran on another model gets that model's series."""
    from cmgm_bench.history.runs import case_values
    from cmgm_bench.measure.measurement import machine_model

    run = load_run(real_runs[0])
    environment = run.meta.environment
    here = machine_model(environment)
    assert here.startswith(environment["cpu_model"]) and environment["cpu_instruction_sets"] in here
    elsewhere = {**run.measurements[0].host, "cpu_model": "Other CPU", "cpu_family_model": "25/1", "cpu_instruction_sets": "avx2_fma"}
    run.measurements[0] = dataclasses.replace(run.measurements[0], host=elsewhere)
    machines = [row["machine"] for row in case_values(run, run_id=1)]
    assert machines[0] == "Other CPU 25/1 [avx2_fma]" == run.measurements[0].machine
    assert machines[1:] == [here] * (len(machines) - 1) and all(m.machine == here for m in run.measurements[1:])
