"""Rich tables for the terminal: results, implementations, environment."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cmgm_bench.analysis.speedups import speedups
from cmgm_bench.config.cases import DEFAULT_ALLOCATOR, shape_label
from cmgm_bench.measure.contention import is_contended

STATUS_STYLE = {"ok": "green", "inaccurate": "red", "oom": "yellow", "unsupported": "dim", "error": "red", "timeout": "yellow"}


def fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def results_table(frame: pd.DataFrame, baseline: str | None = None, title: str = "results") -> Table:
    table = Table(title=title, header_style="bold")
    for name in ("impl", "device", "mode", "shape", "status", "latency ms", "IQR ms", "n", "contention", "speed-up", "GFLOP/s", "% peak",
                 "resident MB", "peak MB", "out err", "attn err"):
        table.add_column(name, justify="left" if name in ("impl", "device", "mode", "shape", "status") else "right")
    speedup = speedups(frame, baseline)
    for index, row in frame.iterrows():
        status = row["status"]
        allocator = row.get("allocator")
        table.add_row(
            str(row["impl"]) + (f" \\[{allocator}]" if isinstance(allocator, str) and allocator != DEFAULT_ALLOCATOR else ""),
            str(row["device"]),
            str(row["mode"]),
            shape_label(row["batch"], row["dim"], row["height"], row["width"], row["heads"]),
            f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            fmt(row["latency_ms"], ".3f"),
            fmt(row["latency_iqr_ms"], ".3f"),
            fmt(row["samples"], ".0f"),
            contention_cell(row.get("contention"), markup=True),
            fmt(speedup[index], ".2f") + ("x" if not math.isnan(speedup[index]) else ""),
            fmt(row["gflops_per_s"], ".1f"),
            fmt(row["pct_peak"], ".1f"),
            fmt(row.get("resident_mb"), ".1f"),
            fmt(row["peak_mem_mb"], ".1f"),
            fmt(row["out_rel_err"], ".1e"),
            fmt(row["attn_rel_err"], ".1e"),
        )
    return table


def contention_cell(share, markup: bool = False) -> str:
    """The contention share, with the ``contended`` mark where no verdict may rest on the case's latency."""
    if not is_contended(share):
        return fmt(share, ".0%")
    return f"[yellow]{share:.0%} contended[/]" if markup else f"{share:.0%} contended"


def problems(frame: pd.DataFrame) -> list[str]:
    bad = frame[frame["status"] != "ok"]
    return [
        f"{r.impl} {r.device} {r.mode} {shape_label(r.batch, r.dim, r.height, r.width, r.heads)}: {r.status}: {r.error}"
        for r in bad.itertuples()
    ]


def mapping_table(mapping: dict, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in mapping.items():
        table.add_row(Text(str(key)), Text(str(value)))
    return table


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, width=200 if not stderr else None)


def flops_table(counts: dict[str, dict[str, int]], title: str) -> Table:
    """Per family: analytic MACs, fvcore MACs, FlopCounterMode FLOPs and MACs; MAC families totalled."""
    from cmgm_bench.measure.counters import MAC_FAMILIES

    table = Table(title=title, header_style="bold")
    for name in ("family", "analytic MACs", "fvcore MACs", "FlopCounterMode FLOPs", "FlopCounterMode MACs", "agree"):
        table.add_column(name, justify="left" if name == "family" else "right")
    analytic, fv, fc = counts["analytic"], counts["fvcore"], counts["flop_counter"]
    families = list(MAC_FAMILIES) + sorted((set(fv) | set(fc)) - set(MAC_FAMILIES))

    def cell(mapping, family, scale=1.0):
        return f"{mapping[family] * scale:,.0f}" if family in mapping else "-"

    for family in families:
        agree = ""
        if family in MAC_FAMILIES:
            values = {analytic.get(family, 0), fc.get(family, 0) / 2} | ({fv.get(family, 0)} if fv else set())
            agree = "yes" if len(values) == 1 else "NO"
        table.add_row(family, cell(analytic, family), cell(fv, family), cell(fc, family), cell(fc, family, 0.5), agree)
    total = lambda mapping, scale=1.0: f"{sum(mapping.get(f, 0) for f in MAC_FAMILIES) * scale:,.0f}" if mapping else "-"
    table.add_row("[bold]total (MAC families)[/]", total(analytic), total(fv), total(fc), total(fc, 0.5), "")
    return table


def simple_table(headers: list[str], rows: list[list[str]], title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for index, name in enumerate(headers):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table
