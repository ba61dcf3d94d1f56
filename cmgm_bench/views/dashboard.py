"""The history dashboard: one static HTML page, charts per case and metric over commits.

Plotly draws the charts; its JavaScript and every data point are written into
the page, so it opens from disk with no server and no network. Each chart marks
the steps found in its series (``history.changepoints``) and the runs where the
torch version changed; hovering a point shows its commit, date and value (with
the IQR for latency). Selects at the top filter by machine, implementation,
mode, shape and metric.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from cmgm_bench.history.changepoints import find_steps
from cmgm_bench.history.runs import METRICS, torch_changes
from cmgm_bench.results.store import atomic_write_bytes

FILTERS = (("machine", "machine"), ("impl", "implementation"), ("mode", "mode"), ("shape", "shape"), ("metric", "metric"))

_FILTER_SCRIPT = """
const selects = Array.from(document.querySelectorAll('select.filter'));
function applyFilters() {
  let shown = 0;
  for (const chart of document.querySelectorAll('div.chart')) {
    const visible = selects.every(s => s.value === '' || chart.dataset[s.name] === s.value);
    chart.style.display = visible ? '' : 'none';
    if (visible) { shown += 1; const plot = chart.querySelector('.js-plotly-plot'); if (plot) Plotly.Plots.resize(plot); }
  }
  document.getElementById('shown').textContent = shown;
}
selects.forEach(s => s.addEventListener('change', applyFilters));
applyFilters();
"""


def _figure(points: pd.DataFrame, metric: str) -> go.Figure:
    unit = METRICS[metric][1]
    positions = list(range(len(points)))
    commits = [str(c)[:8] if c else "?" for c in points["commit"]]
    hover = [
        f"commit {c}<br>{when}<br>{value:.4g} {unit}" + (f" (IQR {iqr:.3g})" if pd.notna(iqr) else "") + f"<br>torch {torch}"
        for c, when, value, iqr, torch in zip(points["commit"], points["started_at"], points["value"], points["iqr"], points["torch_version"])
    ]
    iqr = points["iqr"].astype(float)
    figure = go.Figure(go.Scatter(
        x=positions, y=points["value"].astype(float), mode="lines+markers", name=metric,
        error_y=dict(type="data", array=(iqr / 2).tolist(), visible=bool(iqr.notna().any())),
        hovertext=hover, hoverinfo="text",
    ))
    for step in find_steps(points["value"].astype(float).to_numpy()):
        figure.add_vline(x=step.index - 0.5, line=dict(color="crimson", dash="dash"),
                         annotation_text=f"x{step.ratio:.3f} ({step.confidence:.0%})", annotation_font_color="crimson")
    versions = points["torch_version"].tolist()
    for index in torch_changes(versions):
        figure.add_vline(x=index - 0.5, line=dict(color="gray", dash="dot"),
                         annotation_text=f"torch {versions[index]}", annotation_position="bottom right")
    figure.update_layout(
        height=300, margin=dict(l=60, r=20, t=30, b=40), showlegend=False,
        xaxis=dict(tickmode="array", tickvals=positions, ticktext=commits, title="commit"),
        yaxis=dict(title=unit, rangemode="tozero" if metric != "error" else "normal", type="log" if metric == "error" else "linear"),
    )
    return figure


def write_dashboard(points_by_metric: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Write ``out_dir/index.html``; ``points_by_metric`` maps a metric to ``history.runs.read_points``' frame."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts, choices = [], {name: set() for name, _ in FILTERS}
    for metric, points in points_by_metric.items():
        for (case_key, machine), series in points.groupby(["case_key", "machine"], sort=True):
            first = series.iloc[0]
            tags = {"machine": machine, "impl": first["impl"], "mode": first["mode"], "shape": first["shape"], "metric": metric}
            for name, value in tags.items():
                choices[name].add(str(value))
            data = " ".join(f'data-{name}="{html.escape(str(value))}"' for name, value in tags.items())
            body = _figure(series, metric).to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{len(charts)}")
            charts.append(f'<div class="chart" {data}><h3>{html.escape(case_key)} - {metric}</h3>'
                          f'<p class="machine">{html.escape(machine)}</p>{body}</div>')
    selects = []
    for name, label in FILTERS:
        options = sorted(choices[name])
        first = options[0] if name == "machine" and options else ""  # one machine at a time: series never mix machines
        items = ([] if name == "machine" else ['<option value="">all</option>']) + [
            f'<option value="{html.escape(o)}"{" selected" if o == first else ""}>{html.escape(o)}</option>' for o in options
        ]
        selects.append(f'<label>{label} <select class="filter" name="{name}">{"".join(items)}</select></label>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cmgm-bench history</title>
<style>body{{font-family:sans-serif;margin:1em}} label{{margin-right:1em}} .chart{{border-top:1px solid #ddd;margin-top:1em}}
h3{{margin:.4em 0 0;font-size:1em}} .machine{{margin:0;color:#666;font-size:.85em}}</style>
<script>{plotly.offline.get_plotlyjs()}</script></head>
<body><h1>cmgm-bench history</h1>
<p>{len(charts)} charts, <span id="shown">{len(charts)}</span> shown. Dashed red: a step found in the series
(ratio, confidence); dotted grey: the torch version changed. Error bars: the IQR of the run's samples.</p>
<p>{''.join(selects)}</p>
{''.join(charts)}
<script>{_FILTER_SCRIPT}</script>
</body></html>
"""
    path = out_dir / "index.html"
    atomic_write_bytes(path, page.encode())
    return path
