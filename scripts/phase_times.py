"""Where a sweep's time went: the per-phase wall times of a run's journal, summed per implementation.

Each journal record (``cases.jsonl``) carries ``notes.wall_s`` and
``notes.phase_s`` (setup, float64 reference, build and first call, accuracy, warm-up,
SDPA-backend probe, sampling, memory call, cleanup). Records written before
those notes existed count as zero. How many cases the sweep holds comes from
the run's stored settings, as ``run --resume`` reads them.

    python scripts/phase_times.py RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cmgm_bench.errors import UsageError
from cmgm_bench.execution.sweep import plan_resume
from cmgm_bench.results.store import load_run


def phase_table(measurements) -> pd.DataFrame:
    rows = [{"impl": m.case.impl, "wall": m.notes.get("wall_s", 0.0), **m.notes.get("phase_s", {})} for m in measurements]
    return pd.DataFrame(rows).groupby("impl").sum(numeric_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    try:
        measurements = load_run(args.run_dir).measurements
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    table = phase_table(measurements)
    print(table.round(1).to_string())
    try:
        of = f" of {len(plan_resume(args.run_dir, {}).cases)}"
    except UsageError:  # no stored sweep, or one this machine cannot plan (e.g. cuda here)
        of = ""
    print(f"{len(measurements)}{of} cases finished, {table.wall.sum():.0f} s in cases")


if __name__ == "__main__":
    main()
