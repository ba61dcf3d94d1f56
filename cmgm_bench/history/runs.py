"""Runs into the history database, and series out of it.

A run is stored once: its identity is its start time, command line, host and
commit, so adding it again changes nothing (a run resumed since, with more
cases, replaces its stored cases). A *series* is one case (implementation,
device, dtype, mode, shape, threads) on one machine model with one metric; runs
on different machine models are never joined, and each point carries its torch
version so that a change of version is marked, not hidden.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from cmgm_bench.config.cases import DEFAULT_ALLOCATOR, shape_label
from cmgm_bench.errors import UsageError
from cmgm_bench.history.database import cases_table, runs_table, safe_url
from cmgm_bench.measure.measurement import CPU_KEYS, machine_model
from cmgm_bench.results.store import Run, to_record

# metric name -> (column in the database, unit, the relative change that counts by default)
METRICS = {
    "latency": ("latency_ms", "ms", 0.05),
    "instructions": ("instructions", "instructions", 0.01),
    "memory": ("peak_mem_mb", "MiB", 0.10),
    "resident": ("resident_mb", "MiB", 0.10),
    "error": ("worst_error", "relative error", 1.0),
}
SERIES_COLUMNS = ("case_key", "machine", "impl", "device", "dtype", "mode", "shape", "threads")


@dataclass(frozen=True)
class Added:
    """What ``add_run`` did: ``stored`` (new), ``updated`` (more cases than before) or ``unchanged``."""

    run_id: int
    outcome: str
    cases: int


def case_key(row: dict) -> str:
    """``eager cpu float32 fwd B1 64x28x28 h8 t1``: a case and its thread count, as series are keyed; a CPU
    allocator other than the default follows in brackets (``... t1 [jemalloc]``), so older series go on."""
    shape = shape_label(row["batch"], row["dim"], row["height"], row["width"], row["heads"])
    threads = row.get("threads")
    allocator = row.get("allocator") or DEFAULT_ALLOCATOR
    suffix = "" if allocator == DEFAULT_ALLOCATOR else f" [{allocator}]"
    return f"{row['impl']} {row['device']} {row['dtype']} {row['mode']} {shape} t{threads if threads is not None else '?'}{suffix}"


def run_identity(environment: dict) -> str:
    """The key a run is stored under: adding it again finds it. ``run_uuid`` tells apart two runs of one command
    started in the same second; a run made before it existed keeps the identity it was stored under."""
    parts = [environment.get(k) for k in ("start_time", "command_line", "hostname", "git_commit", "cpu_model")]
    if environment.get("run_uuid"):
        parts.append(environment["run_uuid"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def metric_spec(metric: str) -> tuple[str, str, float]:
    """``(column, unit, default threshold)`` of a metric of :data:`METRICS`; an unknown one is a :class:`UsageError`."""
    if metric not in METRICS:
        raise UsageError(f"--metric: unknown metric {metric!r} (one of {', '.join(METRICS)})")
    return METRICS[metric]


def torch_changes(versions) -> list[int]:
    """Positions in a series (oldest first) where the torch version differs from the recorded one before it."""
    versions = list(versions)
    return [i for i in range(1, len(versions)) if versions[i - 1] is not None and versions[i] != versions[i - 1]]


def case_values(run: Run, run_id: int) -> list[dict]:
    """The rows of ``cases`` that stand for ``run``'s measurements: series keys, metric values, the full results row."""
    environment = run.meta.environment
    values = []
    for measurement in run.measurements:
        row = to_record(measurement)["row"]  # the results row, JSON-safe (no NaN)
        row["threads"] = row.get("threads") or environment.get("threads")
        host = measurement.host  # where an executor ran the case on another machine model
        ran_elsewhere = host is not None and any(host[key] != environment.get(key) for key in CPU_KEYS if key in host)
        machine = machine_model(host if ran_elsewhere else environment, measurement.case.device)
        values.append({
            "run_id": run_id, "case_key": case_key(row), "machine": machine,
            **{name: row[name] for name in ("impl", "device", "dtype", "mode", "batch", "dim", "height", "width", "heads")},
            "threads": row["threads"], "status": row["status"],
            **{name: row[name] for name in ("latency_ms", "latency_iqr_ms", "latency_min_ms", "instructions", "peak_mem_mb", "flops")},
            "resident_mb": row.get("resident_mb"),
            "worst_error": None if math.isnan(measurement.worst_error) else measurement.worst_error,
            "samples_s": list(measurement.samples_s),
            "row": row,
        })
    return values


def stored_run_id(engine: Engine, run: Run) -> int | None:
    """The database id of ``run`` where it was added before."""
    identity = run_identity(run.meta.environment)
    with engine.connect() as connection:
        return connection.execute(sa.select(runs_table.c.id).where(runs_table.c.identity == identity)).scalar()


def add_run(engine: Engine, run: Run, commit: str | None = None, branch: str | None = None) -> Added:
    """Store ``run`` (``commit``/``branch`` override what the run recorded); adding it again stores nothing new.

    Where two processes add the same run at once and the database lets both look
    before either writes (PostgreSQL), the second insert violates ``identity``'s
    uniqueness; it then looks again and finds the run stored.
    """
    try:
        try:
            return _add_run_once(engine, run, commit, branch)
        except IntegrityError:
            return _add_run_once(engine, run, commit, branch)
    except DBAPIError as exc:  # a read-only file, a full disk, a lost server: one line, the password masked
        raise UsageError(f"history database {safe_url(str(engine.url))}: {str(exc.orig).splitlines()[0]}") from None


def _add_run_once(engine: Engine, run: Run, commit: str | None, branch: str | None) -> Added:
    environment = run.meta.environment
    if not environment.get("start_time"):
        raise UsageError(f"{run.path}: the run records no start time; not a cmgm-bench run directory")
    if not run.measurements:
        raise UsageError(f"{run.path}: the run has no finished cases to store")
    identity = run_identity(environment)
    with engine.begin() as connection:
        found = connection.execute(sa.select(runs_table.c.id).where(runs_table.c.identity == identity)).scalar()
        if found is not None:
            stored = connection.execute(sa.select(sa.func.count()).where(cases_table.c.run_id == found)).scalar()
            if stored >= len(run.measurements):
                return Added(found, "unchanged", stored)
            connection.execute(cases_table.delete().where(cases_table.c.run_id == found))
            connection.execute(cases_table.insert(), case_values(run, found))
            return Added(found, "updated", len(run.measurements))
        run_id = connection.execute(runs_table.insert().values(
            identity=identity,
            commit=commit or environment.get("git_commit"),
            branch=branch or environment.get("git_branch"),
            started_at=environment["start_time"],
            added_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            machine=machine_model(environment, environment.get("device") or "cpu"),
            instruction_sets=environment.get("cpu_instruction_sets"),
            torch_version=environment.get("torch_version"),
            cuda_version=environment.get("cuda_version"),
            environment=environment,
            settings=run.meta.settings,
        )).inserted_primary_key[0]
        connection.execute(cases_table.insert(), case_values(run, run_id))
    return Added(run_id, "stored", len(run.measurements))


def read_points(engine: Engine, metric: str = "latency", impls=(), modes=(), shapes=(), machines=(),
                branch: str | None = None) -> pd.DataFrame:
    """One row per (series, run) with a value of ``metric``, oldest run first within a series.

    Columns: the series (:data:`SERIES_COLUMNS`), ``run_id``, ``commit``, ``branch``,
    ``started_at``, ``torch_version``, ``status``, ``value``, ``iqr`` (latency only), ``minimum``, ``contention``
    (the other work on the case's cores while it was timed; missing where not recorded).
    ``shapes`` are shape labels (``B1 64x28x28 h8``) or grids (``28``, ``32x24``).
    """
    column = metric_spec(metric)[0]
    c, r = cases_table.c, runs_table.c
    query = (
        sa.select(
            c.case_key, c.machine, c.impl, c.device, c.dtype, c.mode, c.batch, c.dim, c.height, c.width, c.heads, c.threads,
            c.run_id, r.commit, r.branch, r.started_at, r.torch_version, c.status,
            c[column].label("value"), c.latency_iqr_ms.label("iqr"), c.latency_min_ms.label("minimum"),
            c.row["contention"].as_float().label("contention"),  # a key of the stored results row; absent in older rows
        )
        .join(runs_table, runs_table.c.id == c.run_id)
        .where(c[column].is_not(None))
        .order_by(c.case_key, c.machine, r.started_at, c.run_id)
    )
    if impls:
        query = query.where(c.impl.in_(list(impls)))
    if modes:
        query = query.where(c.mode.in_(list(modes)))
    if machines:
        query = query.where(c.machine.in_(list(machines)))
    if branch:
        query = query.where(r.branch == branch)
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all())
    if frame.empty:
        return pd.DataFrame(columns=[*SERIES_COLUMNS, "run_id", "commit", "branch", "started_at", "torch_version", "status", "value", "iqr",
                                     "minimum", "contention"])
    frame["shape"] = [shape_label(*v) for v in frame[["batch", "dim", "height", "width", "heads"]].itertuples(index=False)]
    if shapes:
        grids = frame.height.astype(str) + "x" + frame.width.astype(str)
        square = frame.height == frame.width
        wanted = set(shapes)
        keep = frame["shape"].isin(wanted) | grids.isin(wanted) | (square & frame.height.astype(str).isin(wanted))
        frame = frame[keep]
    if metric != "latency":
        frame["iqr"] = None
        frame["minimum"] = None
    columns = [*SERIES_COLUMNS, "run_id", "commit", "branch", "started_at", "torch_version", "status", "value", "iqr",
               "minimum", "contention"]
    return frame[columns].reset_index(drop=True)


def mark_changes(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with a ``change`` column: the steps found in each series, and torch version changes."""
    from cmgm_bench.history.changepoints import find_steps  # ruptures: only for what shows the steps

    marks = pd.Series("", index=points.index)
    for _, series in points.groupby(["case_key", "machine"], sort=False):
        for step in find_steps(series["value"].astype(float).to_numpy()):
            marks[series.index[step.index]] = f"step x{step.ratio:.3f} ({step.confidence:.0%})"
        for position in torch_changes(series["torch_version"]):
            index = series.index[position]
            marks[index] = "; ".join(filter(None, [marks[index], f"torch {series['torch_version'][index]}"]))
    return points.assign(change=marks)
