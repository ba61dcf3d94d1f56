"""Speed-up of every case over the run's baseline implementation at the same device, mode and shape."""

from __future__ import annotations

import pandas as pd

from cmgm_bench.measure.measurement import TIMED_STATUSES

SHAPE_COLUMNS = ["device", "mode", "batch", "height", "width", "heads", "dim"]


def speedups(frame: pd.DataFrame, baseline: str | None) -> pd.Series:
    """Baseline latency / latency for the same (device, mode, shape); NaN where there is none."""
    if baseline is None or frame.empty:
        return pd.Series(float("nan"), index=frame.index)
    base = frame[(frame["impl"] == baseline) & (frame["status"].isin(TIMED_STATUSES))]
    base = base.set_index(SHAPE_COLUMNS)["latency_ms"]
    keys = pd.MultiIndex.from_frame(frame[SHAPE_COLUMNS])
    base_latency = base.reindex(keys).to_numpy()
    return pd.Series(base_latency / frame["latency_ms"].astype(float).to_numpy(), index=frame.index)
