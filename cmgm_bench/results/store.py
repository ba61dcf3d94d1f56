"""The results store: one directory per run.

* ``run.json``: the run's metadata (environment, settings, sweep, ceilings),
  written when the run starts and whenever it changes.
* ``cases.jsonl``: the journal, the source of truth. One line per finished
  case, appended and fsynced as soon as the case ends, so a killed run loses
  nothing finished.
* ``results.csv``: one row per case with the columns of ``COLUMNS`` (docs/design.md, "Contracts").
* ``results.json``: the metadata and every case's record, raw latency samples included.

The CSV and JSON are summaries, written atomically (write then rename) once at
the end of a run, or when it is interrupted; appending a case costs one journal
line, whatever the sweep's size. A run without them (killed) is read from
``run.json`` and the journal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd

from cmgm_bench.config.cases import KEY_COLUMNS, Case
from cmgm_bench.errors import UsageError
from cmgm_bench.measure.measurement import AccuracyErrors, Measurement, merge_replicates
from cmgm_bench.results.run_meta import SCHEMA_VERSION, RunMeta

COLUMNS = (
    *KEY_COLUMNS,
    "tokens",
    "status",
    "error",
    "latency_ms",
    "latency_iqr_ms",
    "latency_min_ms",
    "samples",
    "contention",
    "compile_s",
    "flops",
    "gflops_per_s",
    "pct_peak",
    "floor_ms",
    "peak_mem_mb",
    "resident_mb",
    "est_mem_mb",
    "out_rel_err",
    "out_max_abs_err",
    "attn_rel_err",
    "attn_max_abs_err",
    "grad_rel_err",
    "tolerance",
    "accuracy_scope",
    "instructions",
    "threads",
    "sdpa_backend",
    "memory_format",
    "out_dtype",
    "variant",
    "source",
    "machine",
)
# The case key but for the allocator, which files written before it existed lack (they were timed under "pinned").
REQUIRED_COLUMNS = (*(column for column in KEY_COLUMNS if column != "allocator"), "tokens", "status", "latency_ms")
META_FILE = "run.json"
_ERROR_FIELDS = tuple(f.name for f in dataclasses.fields(AccuracyErrors))
_PLAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(Measurement)
    if f.name not in ("case", "status", "samples_s", "errors", "host", "notes", "traceback", "isolated", "replicate_sizes")
)


def to_row(m: Measurement) -> dict:
    """The ``results.csv`` row of a measurement: every column of :data:`COLUMNS`."""
    row = dict.fromkeys(COLUMNS)
    row.update(m.case.as_dict(), tokens=m.case.tokens, status=m.status.value, machine=m.machine)
    row.update({name: getattr(m, name) for name in _PLAIN_FIELDS})
    if m.errors is not None:
        row.update(dataclasses.asdict(m.errors))
    if m.latency is not None:
        row.update(
            latency_ms=m.latency_ms, latency_iqr_ms=m.latency.iqr * 1e3, latency_min_ms=m.latency.minimum * 1e3,
            samples=m.latency.count, gflops_per_s=m.gflops_per_s,
        )
    return row


def to_record(m: Measurement) -> dict:
    """The JSON form of a measurement (a journal line, an entry of ``results.json``'s ``cases``)."""
    return _json_safe({"row": to_row(m), "samples_s": list(m.samples_s), "traceback": m.traceback, "host": m.host,
                       "isolated": m.isolated, "replicate_sizes": m.replicate_sizes, "notes": dict(m.notes)})


def from_record(record: dict, where: Path | str = "") -> Measurement:
    """A measurement from its JSON form; a record missing key columns, or with a value of the wrong type, is a
    :class:`UsageError` naming ``where``."""
    row = record.get("row") if isinstance(record, dict) else None
    missing = [c for c in REQUIRED_COLUMNS if not isinstance(row, dict) or c not in row]
    if missing:
        raise UsageError(f"{where}: a case is missing columns {', '.join(missing)}")
    try:
        return _measurement(record, row)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UsageError(f"{where}: a case holds a value of the wrong type ({exc})") from None


def _measurement(record: dict, row: dict) -> Measurement:
    errors = None
    if row.get("out_rel_err") is not None:
        errors = AccuracyErrors(**{name: row.get(name) for name in _ERROR_FIELDS})
    samples = tuple(float(sample) for sample in record.get("samples_s") or ())
    notes = dict(record.get("notes") or {})
    # records written before these fields existed kept them in the notes
    host = record.get("host") or notes.pop("host", None)
    isolated = record.get("isolated") or notes.pop("isolated", False)
    replicate_sizes = record.get("replicate_sizes") or notes.pop("replicate_sizes", None)
    return Measurement(
        case=Case.from_dict(row),
        status=row["status"],
        samples_s=samples,
        errors=errors,
        host=host,
        isolated=bool(isolated),
        replicate_sizes=replicate_sizes,
        notes=notes,
        traceback=record.get("traceback"),
        **{name: row.get(name) for name in _PLAIN_FIELDS},
    )


def combine_replicates(measurements: list[Measurement]) -> list[Measurement]:
    """One measurement per case: the journal holds one record per replicate with ``run --repeats``. A case
    that ran on two machine models (``--allow-mixed-hosts``) is two cases, never two replicates."""
    groups: dict[tuple, list[Measurement]] = {}
    for measurement in measurements:
        groups.setdefault((measurement.case.key, measurement.machine), []).append(measurement)
    return [merge_replicates(parts) for parts in groups.values()]


@dataclass
class Run:
    """A run as read back: its metadata (environment, sweep, ceilings) and its measurements."""

    path: Path
    meta: RunMeta
    measurements: list[Measurement] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([to_row(m) for m in self.measurements], columns=list(COLUMNS))

    def by_key(self) -> dict[tuple, Measurement]:
        return {m.case.key: m for m in self.measurements}

    @property
    def baseline(self) -> str | None:
        """The implementation speed-ups are relative to, as stored by the run (the registry's, for older runs)."""
        if self.meta.baseline is not None:
            return self.meta.baseline
        from cmgm_bench import registry

        return registry.baseline_name()


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: the file is whole or not there; the
    temporary file is removed when writing fails (a full disk)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file of this process's own and a rename: a reader sees the old
    file or the new one, and two processes writing one path (a cache they share) never write into one temporary."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with the file it was about: a write that fails (a full disk) names none."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror, str(path))


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunWriter:
    """Writes one run directory: metadata first, then a journal line per case, the summaries at the end."""

    def __init__(self, path: Path, meta: RunMeta | Mapping, measurements: list[Measurement] | None = None):
        self.path = Path(path)
        self.meta = meta if isinstance(meta, RunMeta) else RunMeta.from_json(meta)
        self.measurements: list[Measurement] = list(measurements or [])
        self.path.mkdir(parents=True, exist_ok=True)
        self.journal = self.path / "cases.jsonl"
        if not self.journal.exists():  # a new or merged run: the journal starts with what it is given
            self._write_journal()
        self.write_meta()

    def _write_journal(self) -> None:
        _atomic_write(self.journal, "".join(json.dumps(to_record(m)) + "\n" for m in self.measurements))

    def write_meta(self) -> None:
        _atomic_write(self.path / META_FILE, json.dumps(_json_safe(self.meta.to_json()), indent=1))

    def append(self, measurement: Measurement) -> None:
        try:
            with open(self.journal, "a") as handle:
                handle.write(json.dumps(to_record(measurement)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise _naming(exc, self.journal) from None
        self.measurements.append(measurement)

    def replace_all(self, measurements: list[Measurement]) -> None:
        """Replace every measurement (after a pass that changes finished cases), and the metadata with them."""
        self.measurements = list(measurements)
        self._write_journal()
        self.write_meta()

    def finish(self) -> None:
        """Write the summaries, ``results.csv`` and ``results.json``, from the measurements."""
        run = Run(self.path, self.meta, combine_replicates(self.measurements))
        _atomic_write(self.path / "results.csv", run.frame().to_csv(index=False))
        cases = [to_record(m) for m in run.measurements]
        _atomic_write(self.path / "results.json", json.dumps(_json_safe({**self.meta.to_json(), "cases": cases}), indent=1))


def read_journal(path: Path) -> list[dict]:
    """Records of ``cases.jsonl``; a last line cut short by a kill is dropped, any other bad line is a
    :class:`UsageError` naming the file and line."""
    records = []
    lines = path.read_bytes().splitlines() if path.exists() else []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number != len(lines) - 1:
                raise UsageError(f"{path}: line {number + 1} is corrupt") from None
            continue
        if not isinstance(record, dict):
            raise UsageError(f"{path}: line {number + 1} is not a case record")
        records.append(record)
    return records


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: corrupt or truncated results file ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(data, dict) or "environment" not in data:
        raise UsageError(f"{path}: not a cmgm-bench results file")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UsageError(f"{path}: written by a newer cmgm-bench (schema version {version}; this one reads up to {SCHEMA_VERSION})")
    return data


def load_run(path: str | Path) -> Run:
    """Read a run directory (or its ``results.json``); bad input is a :class:`UsageError`.

    A run still going, or killed, has no ``results.json`` yet: its metadata comes
    from ``run.json`` and its records from the journal. The journal wins over a
    ``results.json`` that holds fewer cases (a resumed run that was killed again).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    json_path = path / "results.json" if path.is_dir() else path
    journal = folder / "cases.jsonl"
    if json_path.exists():
        data = _read_json(json_path)
        if not isinstance(data.get("cases"), list):
            raise UsageError(f"{json_path}: not a cmgm-bench results file")
        records = data.pop("cases")
        places = [f"{json_path}, case {index + 1}" for index in range(len(records))]
    elif (folder / META_FILE).exists():
        data, records, places = _read_json(folder / META_FILE), [], []
    else:
        raise UsageError(f"{path}: no results.json or {META_FILE} (not a run directory?)")
    if journal.exists():
        journaled = read_journal(journal)
        if len(journaled) > len(records):
            records, places = journaled, [f"{journal}, line {index + 1}" for index in range(len(journaled))]
    return Run(folder, RunMeta.from_json(data), combine_replicates([from_record(record, place) for record, place in zip(records, places)]))
