"""Size and opening time of the history dashboard for a large history: RUNS runs x SERIES series.

Builds the points of ``SERIES`` series (5 implementations x SERIES/10 shapes x 2 metrics, one machine)
over ``RUNS`` runs, one commit for every two runs, with a 1.3x step two thirds of the way, writes the
page with ``views.dashboard.write_dashboard``, then opens it in Debian's Chromium (headless) and
reports the file size, the time to write it, the time from navigation until the page has loaded
(its first screen, the summary, shown) and the time to draw the charts in view once scrolled to.

    python scripts/studies/dashboard_scale.py [--runs 200] [--series 100] [--out /tmp/dashboard-scale]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cmgm_bench.views.dashboard import write_dashboard


def synthetic_points(runs: int, series: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    impls = ["eager", "sdpa", "compile", "fused", "onnxruntime"]
    grids = [8 + 4 * i for i in range(max(1, series // (2 * len(impls))))]
    frames = {}
    for metric, base in (("latency", 1.0), ("memory", 50.0)):
        rows = []
        for impl_index, impl in enumerate(impls):
            for grid in grids:
                level = base * (1 + impl_index) * grid / 8
                for run in range(runs):
                    step = 1.3 if run >= 2 * runs // 3 else 1.0
                    rows.append({
                        "case_key": f"{impl} cpu float32 fwd B1 64x{grid}x{grid} h8 t2", "machine": "a CPU", "impl": impl,
                        "device": "cpu", "dtype": "float32", "mode": "fwd", "shape": f"B1 64x{grid}x{grid} h8", "threads": 2,
                        "run_id": run, "commit": f"{run // 2:040x}", "branch": "main",
                        "started_at": pd.Timestamp("2031-01-01", tz="UTC") + pd.Timedelta(hours=run),
                        "torch_version": "2.13.0", "status": "ok", "value": level * step * rng.lognormal(0, 0.02),
                        "iqr": level * 0.01 if metric == "latency" else None, "minimum": None, "contention": 0.01,
                    })
        frames[metric] = pd.DataFrame(rows)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dashboard-scale"))
    args = parser.parse_args()
    points = synthetic_points(args.runs, args.series)
    started = time.perf_counter()
    path = write_dashboard(points, args.out)
    written = time.perf_counter() - started
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path.as_uri(), wait_until="load")
        opened = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1e3
        started_drawing = page.evaluate("performance.now()")
        page.evaluate("document.getElementById('grid').scrollIntoView()")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
        scrolled = (page.evaluate("performance.now()") - started_drawing) / 1e3
        drawn = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        charts = page.evaluate("document.querySelectorAll('div.chart').length")
        browser.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    series = sum(frame.groupby(["case_key", "machine"]).ngroups for frame in points.values())
    print(f"{args.runs} runs x {series} series: {charts} charts, page {path.stat().st_size / 2**20:.2f} MiB, written in "
          f"{written:.2f} s; loaded (summary shown) {opened:.2f} s after navigation; scrolled to the charts, the "
          f"{drawn} in view drawn in {scrolled:.2f} s")


if __name__ == "__main__":
    main()
