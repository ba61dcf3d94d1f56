"""``cmgm-bench history``: keep finished runs in a database, show series over commits, gate on the trend, draw a dashboard."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from cmgm_bench.cli_common import FormatOption, fail_with_usage_errors
from cmgm_bench.config.cases import parse_choices, split_list
from cmgm_bench.errors import UsageError
from cmgm_bench.history import DB_ENV, DEFAULT_DB
from cmgm_bench.registry import MODES
from cmgm_bench.views.formats import OutputFormat

# As in cli.py, each command imports the database, pandas and the rendering when it runs.

history_app = typer.Typer(
    help="A database of finished runs: series over commits, change points, a trend gate and a dashboard page.",
    no_args_is_help=True,
)

DbOption = Annotated[Optional[str], typer.Option(
    "--db", help=f"SQLAlchemy URL (postgresql+psycopg://...) or SQLite file path; default ${DB_ENV} or {DEFAULT_DB}.",
)]
ImplFilter = Annotated[Optional[list[str]], typer.Option("--impl", "-i", help="Only these implementations, repeatable or comma separated.")]
ModeFilter = Annotated[Optional[str], typer.Option(help="Only these modes, comma separated.")]
ResFilter = Annotated[Optional[str], typer.Option(help="Only these grids (28, 32x24) or shapes ('B1 64x28x28 h8'), comma separated.")]
MachineFilter = Annotated[Optional[str], typer.Option(help="Only this machine model (as `history show` prints it).")]
BranchFilter = Annotated[Optional[str], typer.Option(help="Only runs recorded on this git branch.")]
MetricOption = Annotated[str, typer.Option(help=(
    "latency (median ms), instructions, memory (peak MiB a call adds), resident (MiB the implementation "
    "keeps) or error (worst relative error)."))]


def _filters(impl, mode, res, machine) -> dict:
    """The filters of ``show`` and ``html``; a mode or grid that can never match is a :class:`UsageError`."""
    if mode:
        parse_choices(mode, "--mode", MODES)
    for value in split_list(res) if res else ():
        if not re.fullmatch(r"\d+(x\d+)?|B\d+ \d+x\d+x\d+ h\d+", value.strip()):
            raise UsageError(f"--res: {value!r} is neither a grid (28, 32x24) nor a shape ('B1 64x28x28 h8')")
    return {
        "impls": split_list(impl) if impl else (),
        "modes": split_list(mode) if mode else (),
        "shapes": split_list(res) if res else (),
        "machines": (machine,) if machine else (),
    }


@history_app.command("add")
@fail_with_usage_errors
def add_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run directories.")],
    db: DbOption = None,
    commit: Annotated[Optional[str], typer.Option(help="Commit to record instead of the run's own (one run only).")] = None,
    branch: Annotated[Optional[str], typer.Option(help="Branch to record instead of the run's own.")] = None,
):
    """Store finished runs: commit, branch, time, machine, settings and every case. Adding a run again stores nothing new."""
    from cmgm_bench.history import database
    from cmgm_bench.history.runs import add_run
    from cmgm_bench.results.store import load_run

    if commit and len(run_dirs) > 1:
        raise UsageError("--commit names the commit of one run; give one run directory")
    runs = [load_run(path) for path in run_dirs]  # every directory read before anything is stored
    with database.opened(db) as engine:
        for path, run in zip(run_dirs, runs):
            added = add_run(engine, run, commit=commit, branch=branch)
            what = {"stored": "stored as", "updated": "more cases since; updated", "unchanged": "already stored as"}[added.outcome]
            typer.echo(f"{path}: {what} run {added.run_id} ({added.cases} cases)")


@history_app.command("show")
@fail_with_usage_errors
def show_command(
    db: DbOption = None,
    impl: ImplFilter = None,
    mode: ModeFilter = None,
    res: ResFilter = None,
    machine: MachineFilter = None,
    branch: BranchFilter = None,
    metric: MetricOption = "latency",
    output_format: FormatOption = "table",
):
    """Per case and machine, the metric over commits (oldest first, newest last), with the steps found and torch version changes."""
    from cmgm_bench.history import database
    from cmgm_bench.history.runs import mark_changes, metric_spec, read_points
    from cmgm_bench.views.formats import emit
    from cmgm_bench.views.history_tables import series_table

    metric_spec(metric)  # an unknown metric fails before the database is opened
    filters = _filters(impl, mode, res, machine)
    with database.opened(db, create=False) as engine:
        points = mark_changes(read_points(engine, metric, branch=branch, **filters))
    frame = points[["case_key", "machine", "commit", "branch", "started_at", "torch_version", "status", "value", "iqr", "change"]]
    frame = frame.rename(columns={"case_key": "case", "value": metric})
    emit(frame, output_format, lambda: series_table(frame, metric))


@history_app.command("check")
@fail_with_usage_errors
def check_command(
    run_dir: Annotated[Path, typer.Argument(help="The new run to judge (it need not be added).")],
    db: DbOption = None,
    window: Annotated[int, typer.Option(help="Runs of history each case is judged against: the last K of its series.")] = 10,
    metric: MetricOption = "latency",
    threshold: Annotated[Optional[float], typer.Option(help=(
        "Relative change that counts (default: 0.05 latency, 0.01 instructions, 0.10 memory)."))] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the window's prediction interval, per direction.")] = 0.99,
    branch: BranchFilter = None,
    fail_on_regression: Annotated[bool, typer.Option(help="Exit 1 if any case is slower than its history.")] = False,
    output_format: FormatOption = "table",
):
    """Judge each case of a new run against the last --window runs of the same case on the same machine model and torch."""
    from cmgm_bench.history import database
    from cmgm_bench.history.runs import metric_spec
    from cmgm_bench.history.trend import check_run
    from cmgm_bench.results.store import load_run
    from cmgm_bench.views.formats import emit
    from cmgm_bench.views.history_tables import pull_request_summary, verdict_table

    metric_spec(metric)  # an unknown metric fails before the database is opened
    if window < 2:
        raise UsageError("--window: at least 2 runs")
    if not 0.5 < confidence < 1:
        raise UsageError("--confidence: between 0.5 and 1")
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise UsageError(f"--threshold: {threshold} must be a positive number")
    run = load_run(run_dir)
    with database.opened(db, create=False) as engine:
        verdicts = check_run(engine, run, metric=metric, window=window, threshold=threshold, confidence=confidence, branch=branch)
    if verdicts.empty:
        raise UsageError(f"{run_dir}: no case with a {metric} value to judge")
    output_format = OutputFormat(output_format)
    if output_format is OutputFormat.MARKDOWN:
        typer.echo(pull_request_summary(verdicts, metric, window))
    else:
        emit(verdicts, output_format, lambda: verdict_table(verdicts, metric))
    if fail_on_regression and (verdicts.verdict == "slower").any():
        raise typer.Exit(1)


@history_app.command("html")
@fail_with_usage_errors
def html_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder for index.html (opens from disk, no server).")],
    db: DbOption = None,
    impl: ImplFilter = None,
    mode: ModeFilter = None,
    res: ResFilter = None,
    machine: MachineFilter = None,
    branch: BranchFilter = None,
):
    """Write a static dashboard page: a summary of what changed first, then a chart per shape and metric with a line per
    implementation over the runs' times, steps and torch changes marked."""
    from cmgm_bench.history import database
    from cmgm_bench.history.runs import METRICS, read_points
    from cmgm_bench.views.dashboard import write_dashboard

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file; give a folder for index.html")
    filters = _filters(impl, mode, res, machine)
    with database.opened(db, create=False) as engine:
        points = {metric: read_points(engine, metric, branch=branch, **filters) for metric in METRICS}
    if all(frame.empty for frame in points.values()):
        raise UsageError("no stored case matches the filters")
    path = write_dashboard({m: f for m, f in points.items() if not f.empty}, out_dir)
    typer.echo(f"wrote {path}")
