"""Merge shards (or any runs of one sweep on one machine) into one run directory."""

from __future__ import annotations

import copy
from pathlib import Path

from cmgm_bench.machine.env import COMPARABLE_KEYS
from cmgm_bench.errors import UsageError
from cmgm_bench.results.store import RunWriter, load_run


def environment_differences(a: dict, b: dict) -> dict[str, tuple]:
    """Keys of :data:`COMPARABLE_KEYS` whose values differ between two environments."""
    return {key: (a.get(key), b.get(key)) for key in COMPARABLE_KEYS if a.get(key) != b.get(key)}


def merge_runs(dirs: list[Path], out: Path) -> RunWriter:
    if not dirs:
        raise UsageError("merge: give at least one run directory")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty")
    runs = [load_run(d) for d in dirs]
    first = runs[0]
    seen: dict[tuple, Path] = {}
    measurements = []
    for run in runs:
        differences = environment_differences(first.meta.environment, run.meta.environment)
        if differences:
            key, (a, b) = next(iter(differences.items()))
            raise UsageError(f"cannot merge {run.path} into {first.path}: {key} differs ({a!r} vs {b!r})")
        for measurement in run.measurements:
            key = measurement.case.key
            if key in seen:
                raise UsageError(f"cannot merge: case {'/'.join(map(str, key))} is in both {seen[key]} and {run.path}")
            seen[key] = run.path
            measurements.append(measurement)
    meta = copy.deepcopy(first.meta)
    meta.merged_from = [str(run.path) for run in runs]
    if meta.settings:
        meta.settings["shard"] = None
    for run in runs[1:]:
        for machine, device, values in run.meta.all_ceilings():
            meta.adopt_ceilings(device, machine, values)
    writer = RunWriter(out, meta, measurements)
    writer.finish()
    return writer
