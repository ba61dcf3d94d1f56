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

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cmgm_bench.cases import KEY_COLUMNS, Case
from cmgm_bench.errors import UsageError

STATUSES = ("ok", "inaccurate", "oom", "unsupported", "error", "timeout")

COLUMNS = (
    *KEY_COLUMNS,
    "tokens",
    "status",
    "error",
    "latency_ms",
    "latency_iqr_ms",
    "latency_min_ms",
    "samples",
    "compile_s",
    "flops",
    "gflops_per_s",
    "pct_peak",
    "floor_ms",
    "peak_mem_mb",
    "est_mem_mb",
    "out_rel_err",
    "out_max_abs_err",
    "attn_rel_err",
    "attn_max_abs_err",
    "grad_rel_err",
    "tolerance",
    "instructions",
    "threads",
    "sdpa_backend",
    "memory_format",
    "out_dtype",
    "variant",
    "source",
)
REQUIRED_COLUMNS = (*KEY_COLUMNS, "tokens", "status", "latency_ms")
META_FILE = "run.json"


@dataclass
class Run:
    """A run as read back: its metadata (environment, sweep, ceilings) and its case records."""

    path: Path
    meta: dict
    records: list[dict] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([record["row"] for record in self.records], columns=list(COLUMNS))

    def by_key(self) -> dict[tuple, dict]:
        return {Case.from_dict(record["row"]).key: record for record in self.records}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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

    def __init__(self, path: Path, meta: dict, records: list[dict] | None = None):
        self.path = Path(path)
        self.meta = meta
        self.records: list[dict] = list(records or [])
        self.path.mkdir(parents=True, exist_ok=True)
        self.journal = self.path / "cases.jsonl"
        if not self.journal.exists():  # a new or merged run: the journal starts with what it is given
            _atomic_write(self.journal, "".join(json.dumps(_json_safe(r)) + "\n" for r in self.records))
        self.write_meta()

    def write_meta(self) -> None:
        _atomic_write(self.path / META_FILE, json.dumps(_json_safe(self.meta), indent=1))

    def append(self, record: dict) -> None:
        record = _json_safe(record)
        with open(self.journal, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)

    def replace_all(self, records: list[dict]) -> None:
        """Replace every record (after a pass that changes finished cases), and the metadata with them."""
        self.records = [_json_safe(record) for record in records]
        _atomic_write(self.journal, "".join(json.dumps(record) + "\n" for record in self.records))
        self.write_meta()

    def finish(self) -> None:
        """Write the summaries, ``results.csv`` and ``results.json``, from the records."""
        run = Run(self.path, self.meta, self.records)
        _atomic_write(self.path / "results.csv", run.frame().to_csv(index=False))
        _atomic_write(self.path / "results.json", json.dumps(_json_safe({**self.meta, "cases": self.records}), indent=1))


def read_journal(path: Path) -> list[dict]:
    """Records of ``cases.jsonl``; a last line cut short by a kill is dropped."""
    records = []
    lines = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise UsageError(f"{path}: line {number + 1} is corrupt") from None
    return records


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: corrupt or truncated results file ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(data, dict) or "environment" not in data:
        raise UsageError(f"{path}: not a cmgm-bench results file")
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
    elif (folder / META_FILE).exists():
        data, records = _read_json(folder / META_FILE), []
    else:
        raise UsageError(f"{path}: no results.json or {META_FILE} (not a run directory?)")
    if journal.exists():
        journaled = read_journal(journal)
        if len(journaled) > len(records):
            records = journaled
    for record in records:
        row = record.get("row") if isinstance(record, dict) else None
        missing = [c for c in REQUIRED_COLUMNS if not isinstance(row, dict) or c not in row]
        if missing:
            raise UsageError(f"{json_path}: a case is missing columns {', '.join(missing)}")
    return Run(folder, data, records)
