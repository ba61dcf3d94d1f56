"""The trend gate: each case of a new run against the last K runs of its series.

The test is a prediction interval on log values (as Bencher's t-test threshold):
with the window's mean ``m`` and standard deviation ``s`` of ``log(value)``, a
new value is outside when ``|log(new) - m| > t(confidence, K-1) * s * sqrt(1 + 1/K)``.
A verdict also needs the change against the window's median to exceed the
metric's threshold, so a deterministic metric (instructions, ``s = 0``) is
judged by the threshold alone. Only runs before the new one, on the same machine
model and torch version, make the window; with fewer than ``MIN_HISTORY`` the
verdict is ``too little history``. A latency timed beside other work (the case's
``contention``, :mod:`cmgm_bench.measure.contention`) is ``inconclusive (contended)``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from cmgm_bench.history.runs import case_values, metric_spec, read_points, stored_run_id
from cmgm_bench.measure.contention import CONTENDED, is_contended
from cmgm_bench.measure.measurement import TIMED_STATUSES
from cmgm_bench.results.store import Run

MIN_HISTORY = 3
VERDICT_COLUMNS = ("case", "machine", "window", "window_median", "value", "change", "limit", "verdict", "note")


def judge(window: np.ndarray, value: float, threshold: float, confidence: float) -> tuple[str, float]:
    """``(verdict, limit)``: ``slower``/``faster``/``same`` for ``value`` against ``window``; ``limit`` the relative bound."""
    logs = np.log(window)
    spread = float(np.std(logs, ddof=1)) if logs.size > 1 else 0.0
    bound = float(student_t.ppf(confidence, logs.size - 1)) * spread * math.sqrt(1 + 1 / logs.size)
    change = value / float(np.median(window)) - 1
    distance = math.log(value) - float(np.mean(logs))
    limit = max(math.expm1(bound), threshold)
    if distance > bound and change > threshold:
        return "slower", limit
    if distance < -bound and change < -threshold:
        return "faster", limit
    return "same", limit


def check_run(engine, run: Run, metric: str = "latency", window: int = 10, threshold: float | None = None,
              confidence: float = 0.99, branch: str | None = None) -> pd.DataFrame:
    """One row per case of ``run`` with a value of ``metric``: its verdict against the history (:data:`VERDICT_COLUMNS`)."""
    column, _, default_threshold = metric_spec(metric)
    threshold = default_threshold if threshold is None else threshold
    environment = run.meta.environment
    started, torch_version = environment.get("start_time", ""), environment.get("torch_version")
    history = read_points(engine, metric, branch=branch)
    own = stored_run_id(engine, run)
    history = history[(history.started_at < started) & (history.run_id != own) & history.status.isin(TIMED_STATUSES)]
    rows = []
    for case in case_values(run, run_id=0):  # the keys and values ``add`` stores
        value = case[column]
        if value is None or value <= 0:
            continue
        series = history[(history.case_key == case["case_key"]) & (history.machine == case["machine"])]
        same_torch = series[series.torch_version == torch_version].tail(window)
        note = "" if len(same_torch) == len(series.tail(window)) else f"torch {torch_version} differs from older runs"
        if len(same_torch) < MIN_HISTORY:
            rows.append((case["case_key"], case["machine"], len(same_torch), None, value, None, None, "too little history", note))
            continue
        values = same_torch["value"].to_numpy(dtype=float)
        verdict, limit = judge(values, value, threshold, confidence)
        if metric == "latency" and is_contended(case["row"].get("contention")):
            verdict = CONTENDED
        rows.append((case["case_key"], case["machine"], len(values), float(np.median(values)), value,
                     value / float(np.median(values)) - 1, limit, verdict, note))
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))

