"""The fused implementations' target table from run directories: speed-up of ``fused`` and ``fused-bf16`` over ``eager``.

Each run directory must hold ``eager`` and the fused implementations measured
in the same run (one thread count per run). Prints a markdown table, one row
per mode and shape, one column per run and implementation, each cell the
ratio of medians ``eager / impl`` in that run, and the worst errors.

    python scripts/studies/fused_targets.py /tmp/sw1 /tmp/sw2
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

SHAPE = ["mode", "batch", "height", "heads"]
IMPLS = ["fused", "fused-bf16"]


def speedups(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "results.csv")
    threads = int(frame.threads.iloc[0])
    eager = frame[frame.impl == "eager"].set_index(SHAPE).latency_ms
    table = {}
    for impl in IMPLS:
        mine = frame[frame.impl == impl].set_index(SHAPE)
        table[f"{impl} {threads}t"] = eager / mine.latency_ms
    return pd.DataFrame(table)


def main() -> None:
    runs = [Path(arg) for arg in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__)
    tables = [speedups(run) for run in runs]
    joined = pd.concat(tables, axis=1).sort_index()
    print("| mode | B | grid | heads | " + " | ".join(joined.columns) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(joined.columns))
    for (mode, batch, grid, heads), row in joined.iterrows():
        cells = " | ".join("-" if pd.isna(v) else f"{v:.2f}x" for v in row)
        print(f"| {mode} | {batch} | {grid} | {heads} | {cells} |")
    frames = pd.concat([pd.read_csv(run / "results.csv") for run in runs])
    for impl in IMPLS:
        mine = frames[frames.impl == impl]
        print(
            f"\n{impl}: worst out_rel_err {mine.out_rel_err.max():.2g}, worst attn_rel_err {mine.attn_rel_err.max():.2g}, "
            f"statuses {({k: int(v) for k, v in mine.status.value_counts().items()})}; "
            f"lowest speed-up {joined[[c for c in joined.columns if c.startswith(impl + ' ')]].min().min():.2f}x"
        )


if __name__ == "__main__":
    main()
