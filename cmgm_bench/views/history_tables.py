"""The history's tables: a metric over commits, verdicts against the history, the pull-request summary."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from cmgm_bench.history.runs import METRICS
from cmgm_bench.measure.contention import CONTENDED
from cmgm_bench.views import markdown


def series_table(frame: pd.DataFrame, metric: str) -> Table:
    """``history show``'s terminal table: one row per stored point, oldest first."""
    table = Table(title=f"{metric} ({METRICS[metric][1]}) over commits, newest last")
    for column in ("case", "machine", "commit", "date", "torch", metric, "IQR", "change"):
        table.add_column(column, justify="right" if column in (metric, "IQR") else "left")
    for row in frame.itertuples(index=False):
        table.add_row(row.case, row.machine, str(row.commit or "?")[:10], str(row.started_at)[:16], str(row.torch_version),
                      f"{getattr(row, metric):.4g}", "" if pd.isna(row.iqr) else f"{row.iqr:.3g}", row.change)
    return table


def _percent(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:+.1%}"


def _number(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.4g}"


def _limit(value) -> str:
    return "" if value is None or pd.isna(value) else f"±{value:.1%}"


def verdict_table(verdicts: pd.DataFrame, metric: str) -> Table:
    table = Table(title=f"{metric} against its history")
    for column in ("case", "machine", "runs", "history median", "new", "change", "limit", "verdict"):
        table.add_column(column)
    style = {"slower": "red", "faster": "green"}
    for row in verdicts.itertuples(index=False):
        verdict = f"[{style[row.verdict]}]{row.verdict}[/]" if row.verdict in style else row.verdict
        table.add_row(row.case, row.machine, str(row.window), _number(row.window_median), _number(row.value),
                      _percent(row.change), _limit(row.limit),
                      verdict + (f" ({row.note})" if row.note else ""))
    return table


def pull_request_summary(verdicts: pd.DataFrame, metric: str, window: int) -> str:
    """The Markdown comment for a pull request: counts first, then every case that is not ``same``, then the rest folded."""
    counts = verdicts.verdict.value_counts()
    head = ", ".join(f"{counts[v]} {v}" for v in ("slower", "faster", "same", CONTENDED, "too little history") if v in counts)
    lines = [f"### cmgm-bench: {metric} against the last {window} runs", "", head, ""]
    header = ["case", "machine", "runs", "history median", "new", "change", "limit", "verdict"]

    def rows(frame):
        return [[r.case, r.machine, r.window, _number(r.window_median), _number(r.value), _percent(r.change),
                 _limit(r.limit), r.verdict + (f" ({r.note})" if r.note else "")]
                for r in frame.itertuples(index=False)]

    notable = verdicts[verdicts.verdict.isin(["slower", "faster"])]
    if not notable.empty:
        lines += [markdown.table(header, rows(notable)), ""]
    rest = verdicts[~verdicts.verdict.isin(["slower", "faster"])]
    if not rest.empty:
        lines += ["<details><summary>other cases</summary>", "", markdown.table(header, rows(rest)), "", "</details>"]
    return "\n".join(lines)
