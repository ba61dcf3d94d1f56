"""The tables of the commands that time one case: ``ab``'s races and ``profile``'s operators."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from cmgm_bench.views import terminal

RACE_ALIGN = ["l", "r", "r", "r", "r", "l", "r", "r", "r", "r"]


def race_frame(results, base_impl: str, cand_impl: str) -> pd.DataFrame:
    """One row per shape of an ``ab`` race (:class:`~cmgm_bench.execution.paired.PairedResult`), as text."""
    same = base_impl == cand_impl
    sides = (f"{base_impl} ms (base)", f"{cand_impl} ms (cand)") if same else (f"{base_impl} ms", f"{cand_impl} ms")
    headers = ["shape", *sides, "median pair ratio", "95% CI", "verdict", "pairs", "calls per sample", "seconds", "contention"]
    rows = [
        [r.base.shape_label, f"{r.base_ms:.3f}", f"{r.cand_ms:.3f}", f"{r.ratio:.4f}", f"[{r.low:.4f}, {r.high:.4f}]", r.verdict,
         str(r.pairs), "/".join(map(str, r.calls_per_sample)), f"{r.seconds:.2f}", terminal.fmt(r.contention, ".0%")]
        for r in results
    ]
    return pd.DataFrame(rows, columns=headers)


def race_table(frame: pd.DataFrame, title: str) -> Table:
    return terminal.simple_table(list(frame.columns), frame.values.tolist(), title=title)


def operators_table(profile, title: str) -> Table:
    """``profile``'s operators by self time (:class:`~cmgm_bench.measure.profiling.Profile`)."""
    rows = [[r.name, str(r.calls), f"{r.self_ms:.3f}", f"{100 * r.share:.1f}%", r.input_shapes] for r in profile.operators]
    return terminal.simple_table(["operator", "calls", "self ms", "share", "input shapes"], rows, title=title)
