"""The history dashboard: one static page that says what changed first, then charts every run.

The page opens on a summary: every series (a case on a machine, one metric) with its latest
value, its change against the runs before it judged by the ``history check`` rule
(:func:`cmgm_bench.history.trend.judge`), and the steps ``history.changepoints`` found, with
their commits; series that changed come first, each linked to its chart. Below it the charts
are small multiples in a grid, one per case without the implementation (machine, dtype, mode,
shape, threads) and metric, with one line per implementation in a colour that is the same in
every chart. The x axis is the run's start time, so runs of one commit are separate points;
commits label the ticks, and hovering a point shows its commit, date, value, IQR, machine and
contention. Filters select by machine, implementation, mode, shape and metric.

The page is one offline file: Plotly's script and the data (as one JSON object) are in it.
A chart is drawn only when it scrolls into view, so a history of hundreds of runs and series
opens as fast as a small one (docs/history.md gives the size and time of a large page).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.offline

from cmgm_bench.history.changepoints import find_steps
from cmgm_bench.history.runs import METRICS, torch_changes
from cmgm_bench.history.trend import MIN_HISTORY, judge
from cmgm_bench.results.store import atomic_write_bytes

FILTERS = (("machine", "machine"), ("impl", "implementation"), ("mode", "mode"), ("shape", "shape"), ("metric", "metric"))
WINDOW = 10  # runs before the latest that its change is judged against, as `history check --window` defaults
CONFIDENCE = 0.99
MAX_COMMIT_TICKS = 12

_SCRIPT_PATH = Path(__file__).with_name("dashboard.js")


def _title(case_key: str) -> str:
    """The case key without its implementation: what the lines of one chart share."""
    return case_key.split(" ", 1)[1] if " " in case_key else case_key


def _judged(series: pd.DataFrame, metric: str) -> dict:
    """The latest value of one series against the runs before it, and the steps found in it."""
    values = series["value"].astype(float).to_numpy()
    latest = float(values[-1])
    window = values[max(0, len(values) - 1 - WINDOW):-1]
    window = window[window > 0]
    threshold = METRICS[metric][2]
    if latest > 0 and window.size >= MIN_HISTORY:
        verdict, _ = judge(window, latest, threshold, CONFIDENCE)
        change = latest / float(np.median(window)) - 1
    else:
        verdict, change = "too little history", None
    commits = series["commit"].tolist()
    steps = [{"commit": str(commits[s.index] or "?"), "ratio": s.ratio, "confidence": s.confidence, "index": s.index}
             for s in find_steps(values)]
    weight = max([abs(math.log1p(change)) if verdict in ("slower", "faster") else 0.0] + [abs(math.log(s["ratio"])) for s in steps])
    return {"latest": latest, "commit": str(commits[-1] or "?"), "change": change, "verdict": verdict, "steps": steps,
            "changed": verdict in ("slower", "faster") or bool(steps), "weight": weight}


def build_page_data(points_by_metric: dict[str, pd.DataFrame]) -> tuple[list[dict], list[dict], dict[str, str]]:
    """``(charts, summary, colours)``: every chart's lines and marks, one summary row per series, a colour per
    implementation."""
    impls = sorted({impl for points in points_by_metric.values() for impl in points["impl"].unique()})
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24
    colours = {impl: palette[i % len(palette)] for i, impl in enumerate(impls)}
    charts: dict[tuple, dict] = {}
    summary = []
    for metric, points in points_by_metric.items():
        unit = METRICS[metric][1]
        for (case_key, machine), series in points.groupby(["case_key", "machine"], sort=True):
            series = series.reset_index(drop=True)
            first = series.iloc[0]
            chart = charts.setdefault((machine, _title(case_key), metric), {
                "id": f"chart-{len(charts)}", "title": f"{_title(case_key)} - {metric}", "machine": machine,
                "mode": first["mode"], "shape": first["shape"], "metric": metric, "unit": unit, "log": metric == "error",
                "lines": [], "marks": [],
            })
            times = series["started_at"].astype(str).tolist()
            chart["lines"].append({
                "impl": first["impl"], "x": times, "y": series["value"].astype(float).tolist(),
                "commit": [str(c or "?") for c in series["commit"]],
                "iqr": [None if pd.isna(v) else float(v) for v in series["iqr"]],
                "contention": [None if pd.isna(v) else float(v) for v in series["contention"]],
                "torch": [str(v) for v in series["torch_version"]],
            })
            judged = _judged(series, metric)
            for step in judged["steps"]:
                chart["marks"].append({"x": times[step["index"]], "colour": colours[first["impl"]],
                                       "label": f"{first['impl']} x{step['ratio']:.3f} ({step['confidence']:.0%})"})
            versions = series["torch_version"].tolist()
            for index in torch_changes(versions):
                chart["marks"].append({"x": times[index], "colour": "gray", "label": f"torch {versions[index]}"})
            summary.append({"chart": chart["id"], "series": case_key, "machine": machine, "metric": metric, "unit": unit,
                            "impl": first["impl"], **judged})
    summary.sort(key=lambda row: (not row["changed"], -row["weight"], row["series"], row["metric"]))
    return list(charts.values()), summary, colours


def _summary_html(summary: list[dict]) -> str:
    changed = [row for row in summary if row["changed"]]
    head = (f"<p><b>{len(changed)} of {len(summary)} series changed</b>: the latest run against the {WINDOW} before it "
            f"(the <code>history check</code> rule), and the steps found in each series.</p>")
    columns = ("series", "machine", "metric", "latest", "change", "verdict", "steps (commit, ratio)")
    header = "<tr>" + "".join(f"<th>{column}</th>" for column in columns) + "</tr>"

    def row_html(row: dict) -> str:
        change = "" if row["change"] is None else f"{row['change']:+.1%}"
        steps = ", ".join(f'<span class="step" title="{html.escape(s["commit"])}">{html.escape(s["commit"][:10])} x{s["ratio"]:.3f}</span>'
                          for s in row["steps"])
        verdict = html.escape(row["verdict"])
        return (f'<tr class="{html.escape(row["verdict"].split()[0])}"><td><a href="#{row["chart"]}">{html.escape(row["series"])}</a></td>'
                f'<td>{html.escape(row["machine"])}</td><td>{row["metric"]}</td><td>{row["latest"]:.4g} {html.escape(row["unit"])}</td>'
                f'<td>{change}</td><td>{verdict}</td><td>{steps}</td></tr>')

    table = f'<table id="summary">{header}{"".join(row_html(r) for r in changed)}</table>' if changed else ""
    rest = [row for row in summary if not row["changed"]]
    unchanged = (f'<details><summary>{len(rest)} series unchanged</summary><table>{header}'
                 f'{"".join(row_html(r) for r in rest)}</table></details>') if rest else ""
    return head + table + unchanged


def write_dashboard(points_by_metric: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Write ``out_dir/index.html``; ``points_by_metric`` maps a metric to ``history.runs.read_points``' frame."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts, summary, colours = build_page_data(points_by_metric)
    choices = {name: sorted({str(c[name]) for c in charts}) for name, _ in FILTERS if name != "impl"}
    choices["impl"] = sorted({str(line["impl"]) for c in charts for line in c["lines"]})
    selects = []
    for name, label in FILTERS:
        first = choices[name][0] if name == "machine" and choices[name] else ""  # one machine at a time: series never mix
        items = ([] if name == "machine" else ['<option value="">all</option>']) + [
            f'<option value="{html.escape(o)}"{" selected" if o == first else ""}>{html.escape(o)}</option>' for o in choices[name]]
        selects.append(f'<label>{label} <select class="filter" name="{name}">{"".join(items)}</select></label>')
    data = json.dumps({"charts": charts, "colours": colours, "maxCommitTicks": MAX_COMMIT_TICKS}).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cmgm-bench history</title>
<style>body{{font-family:sans-serif;margin:1em}} label{{margin-right:1em}}
table{{border-collapse:collapse;font-size:.85em;margin:.5em 0}} td,th{{border:1px solid #ddd;padding:2px 6px;text-align:left}}
tr.slower td{{background:#fde2e2}} tr.faster td{{background:#e2f5e2}}
#grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}}
.chart{{border:1px solid #ddd;padding:4px;min-height:300px}} .chart h3{{margin:.2em 0 0;font-size:.9em}}
.machine{{margin:0;color:#666;font-size:.8em}} .plot{{height:260px}}</style>
<script>{plotly.offline.get_plotlyjs()}</script></head>
<body><h1>cmgm-bench history</h1>
{_summary_html(summary)}
<p>{''.join(selects)} <span id="shown">{len(charts)}</span> of {len(charts)} charts shown. One line per implementation;
dashed: a step found in that implementation's series; dotted grey: the torch version changed; error bars: the IQR.</p>
<div id="grid"></div>
<script id="history-data" type="application/json">{data}</script>
<script>{_SCRIPT_PATH.read_text()}</script>
</body></html>
"""
    path = out_dir / "index.html"
    atomic_write_bytes(path, page.encode())
    return path
