"""The history database: its tables, its schema version, and opening it safely.

Any SQLAlchemy URL works (a team may point it at PostgreSQL); a plain path is a
SQLite file, the embedded default. The schema version lives in the database
(``meta`` table); a database of another version, or a file that is not a
database, is refused with a :class:`UsageError`, never altered.

Two processes may add runs at once: SQLite transactions start with
``BEGIN IMMEDIATE`` (one writer at a time, the other waits up to
``BUSY_TIMEOUT_S``), PostgreSQL ones take an advisory lock while the schema is
created.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from cmgm_bench.errors import UsageError
from cmgm_bench.history import DB_ENV, DEFAULT_DB

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60
# Any fixed number: the advisory lock that serialises schema creation on PostgreSQL.
_PG_SCHEMA_LOCK = 0x636D676D

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs_table = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # start time, command line, host and commit of the run: the same run added twice has the same identity.
    sa.Column("identity", sa.String(64), nullable=False, unique=True),
    sa.Column("commit", sa.String(64)),
    sa.Column("branch", sa.String(255)),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("added_at", sa.String(40), nullable=False),
    sa.Column("machine", sa.String(255), nullable=False),
    sa.Column("instruction_sets", sa.String(255)),
    sa.Column("torch_version", sa.String(64)),
    sa.Column("cuda_version", sa.String(64)),
    sa.Column("environment", sa.JSON, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
)

cases_table = sa.Table(
    "cases", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    # impl, device, dtype, mode, shape and threads: with the machine, what makes a series.
    sa.Column("case_key", sa.String(255), nullable=False, index=True),
    sa.Column("machine", sa.String(255), nullable=False),
    sa.Column("impl", sa.String(128), nullable=False),
    sa.Column("device", sa.String(32), nullable=False),
    sa.Column("dtype", sa.String(32), nullable=False),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("heads", sa.Integer, nullable=False),
    sa.Column("threads", sa.Integer),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("latency_iqr_ms", sa.Float),
    sa.Column("latency_min_ms", sa.Float),
    sa.Column("samples_s", sa.JSON),
    sa.Column("instructions", sa.Float),
    sa.Column("peak_mem_mb", sa.Float),
    sa.Column("resident_mb", sa.Float),  # added within schema version 1: older databases gain it when opened
    sa.Column("worst_error", sa.Float),
    sa.Column("flops", sa.Float),
    sa.Column("row", sa.JSON, nullable=False),
)


def database_url(db: str | None) -> str:
    """``--db`` as a SQLAlchemy URL: a URL as given, a path as a SQLite file; default ``$CMGM_BENCH_HISTORY_DB`` or :data:`DEFAULT_DB`."""
    db = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def _serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite: every transaction takes the write lock at its start, so two adding processes queue, not deadlock."""

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_database(db: str | None = None, create: bool = True) -> Engine:
    """An engine on the history database, its schema created (when ``create``) and its version checked."""
    url = database_url(db)
    if not create and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise UsageError(f"{url.removeprefix('sqlite:///')}: no history database here (add a run first: cmgm-bench history add RUN_DIR)")
    if create and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
            _serialise_sqlite_writers(engine)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise UsageError(f"--db {safe_url(url)}: {str(exc).replace(url, safe_url(url))}") from None
    try:
        with engine.begin() as connection:
            _check_or_create_schema(connection, url, create)
    except DBAPIError as exc:
        engine.dispose()
        raise UsageError(f"history database {safe_url(url)}: {str(exc.orig).splitlines()[0]}") from None
    except UsageError:
        engine.dispose()
        raise
    return engine


@contextlib.contextmanager
def opened(db: str | None = None, create: bool = True) -> Iterator[Engine]:
    """:func:`open_database` for one command: its connections are closed when the block ends, so the file is not
    held open (a SQLite file stays locked, or its filesystem busy, while a pooled connection lives)."""
    engine = open_database(db, create)
    try:
        yield engine
    finally:
        engine.dispose()


def _check_or_create_schema(connection, url: str, create: bool) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
    tables = set(sa.inspect(connection).get_table_names())
    if "meta" not in tables:
        if tables - {"meta", "runs", "cases"}:
            found = ", ".join(sorted(tables))
            raise UsageError(f"{safe_url(url)}: a database of something else (tables {found}), not a cmgm-bench history")
        if not create:
            raise UsageError(f"{safe_url(url)}: no history here yet (add a run first: cmgm-bench history add RUN_DIR)")
        metadata.create_all(connection)
        connection.execute(meta_table.insert().values(name="schema_version", value=str(SCHEMA_VERSION)))
        return
    found = connection.execute(sa.select(meta_table.c.value).where(meta_table.c.name == "schema_version")).scalar()
    if found != str(SCHEMA_VERSION):
        raise UsageError(
            f"{safe_url(url)}: history schema version {found}, this cmgm-bench reads version {SCHEMA_VERSION}; "
            "use the cmgm-bench that wrote it, or a new database"
        )
    _add_missing_columns(connection)


def _add_missing_columns(connection) -> None:
    """Nullable columns added to ``cases`` since a database was made (older cmgm-bench ignores them)."""
    present = {column["name"] for column in sa.inspect(connection).get_columns("cases")}
    for column in cases_table.columns:
        if column.name not in present and column.nullable and not column.primary_key:
            kind = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f'ALTER TABLE cases ADD COLUMN "{column.name}" {kind}')


def safe_url(url: str) -> str:
    """The URL without its password, for messages; also a URL that does not parse (the password is masked by
    its place: what stands between ``user:`` and ``@``)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
