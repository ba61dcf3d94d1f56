"""Speed-up of every case over the run's baseline implementation at the same device, mode, shape and allocator."""

from __future__ import annotations

import pandas as pd

from cmgm_bench.measure.measurement import TIMED_STATUSES

SHAPE_COLUMNS = ["device", "mode", "batch", "height", "width", "heads", "dim"]


def speedups(frame: pd.DataFrame, baseline: str | None) -> pd.Series:
    """Baseline latency / latency for the same (device, mode, shape, machine model); NaN where there is none."""
    if baseline is None or frame.empty:
        return pd.Series(float("nan"), index=frame.index)
    columns = SHAPE_COLUMNS + (["allocator"] if "allocator" in frame else [])
    keyed = frame[columns].assign(machine=frame["machine"].fillna("") if "machine" in frame else "")
    base_rows = (frame["impl"] == baseline) & (frame["status"].isin(TIMED_STATUSES))
    base = pd.Series(frame.loc[base_rows, "latency_ms"].to_numpy(), index=pd.MultiIndex.from_frame(keyed[base_rows]))
    keys = pd.MultiIndex.from_frame(keyed)
    base_latency = base.reindex(keys).to_numpy()
    return pd.Series(base_latency / frame["latency_ms"].astype(float).to_numpy(), index=frame.index)
