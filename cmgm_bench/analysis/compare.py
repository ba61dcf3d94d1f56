"""Judge a candidate run against a base run, case by case.

Latency verdicts need both a threshold and statistical evidence (see
:func:`cmgm_bench.stats.verdict`). Separate runs differ by more than the spread
within each: with two or more replicates of a case on both sides (``run
--repeats``) the interval is Welch's t over the replicates' medians,
simultaneous over the compared cases (:data:`FAMILY_ERROR`);
otherwise it is the bootstrap of the samples widened by the run-to-run spread
(``run_spread``: ``--run-spread``, else the largest spread between replicate
medians that either run measured, else :data:`DEFAULT_RUN_SPREAD`), and a
difference only that widening hides is ``inconclusive (one replicate)``. A case
timed while other work took more than a set share of its cores
(:mod:`cmgm_bench.measure.contention`) on either side is ``inconclusive
(contended)``. Instruction counts are deterministic, so they are judged on the
threshold alone. Accuracy (a case became inaccurate, or stopped running) and
memory are judged too: each of the two memory figures (``peak_mem_mb``, what a
call adds; ``resident_mb``, what the implementation keeps) regresses past
``mem_threshold``; a run without ``resident_mb`` (an older one) is judged on the
peak alone, and the comparison counts those cases. Two runs on different
machines or software are refused unless allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

import pandas as pd

from cmgm_bench.config.cases import KEY_COLUMNS, Case
from cmgm_bench.errors import UsageError
from cmgm_bench.measure.contention import CONTENDED
from cmgm_bench.measure.measurement import Measurement, Status
from cmgm_bench.results.merge import environment_differences
from cmgm_bench.stats import bootstrap_ratio_of_medians, geometric_mean, replicate_ratio_interval, verdict
from cmgm_bench.results.store import Run

METRICS = ("latency", "instructions")
DEFAULT_THRESHOLDS = {"latency": 0.05, "instructions": 0.01}
# A one-replicate interval covers the samples of one process at one time, not a shared machine's slow periods
# between runs: widened less than the speed swings measured there, A/A compares were still confidently wrong
# (docs/performance.md#replicates has the figures).
DEFAULT_RUN_SPREAD = 3.0
ONE_REPLICATE = "inconclusive (one replicate)"
# Over replicates, the intervals of all compared cases hold together with 95 % (Bonferroni): a gate fails on any
# one case, so a per-case 95 % would raise a false alarm in ~1 of 10 compares of 4 cases.
FAMILY_ERROR = 0.05
# Peak memory is counted in pages; changes below this are noise, whatever their ratio.
MEMORY_NOISE_FLOOR_MB = 1.0


@dataclass
class Judged:
    """One case's metric in both runs, the candidate's ratio to the base with its interval, and the verdict."""

    base: float | None
    cand: float | None
    ratio: float | None
    low: float | None
    high: float | None
    verdict: str


@dataclass
class CaseComparison(Judged):
    key: tuple
    base_status: str
    cand_status: str
    accuracy: str | None = None  # what regressed, if anything
    memory_ratio: float | None = None  # peak_mem_mb, cand / base
    resident_ratio: float | None = None  # resident_mb, cand / base (None: a run has none, e.g. an older one)
    memory_regressed: bool = False  # either figure grew past the memory threshold

    @property
    def regressed(self) -> bool:
        return self.verdict == "slower" or self.accuracy is not None or self.memory_regressed

    def as_row(self) -> dict:
        row = dict(zip(KEY_COLUMNS, self.key))
        row.update({k: v for k, v in asdict(self).items() if k != "key"})
        row["regressed"] = self.regressed
        return row


@dataclass
class Comparison:
    metric: str
    threshold: float
    cases: list[CaseComparison]
    only_base: list[tuple]
    only_cand: list[tuple]
    environment_differences: dict = field(default_factory=dict)
    run_spread: float | None = None  # latency: the factor single-replicate intervals were widened by
    replicated_cases: int = 0  # latency: cases judged over replicates of both runs
    # ... of them, those whose replicates shared one process on either side (a run without --isolate)
    shared_process_cases: int = 0
    without_resident: int = 0  # compared cases where a run has no resident_mb (older runs): judged on the peak only

    @property
    def regressed(self) -> bool:
        return any(case.regressed for case in self.cases)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([case.as_row() for case in self.cases])

    def geomean_by_impl(self) -> dict[str, float]:
        groups: dict[str, list[float]] = {}
        for case in self.cases:
            if case.ratio is not None:
                groups.setdefault(case.key[0], []).append(case.ratio)
        return {impl: geometric_mean(ratios) for impl, ratios in sorted(groups.items())}


def accuracy_regression(base: Measurement, cand: Measurement) -> str | None:
    if base.timed and not cand.timed:
        return f"stopped running: {cand.status}"
    if base.status is Status.OK and cand.status is Status.INACCURATE:
        return f"became inaccurate ({cand.worst_error:.2g} > {cand.tolerance})"
    return None


def replicate_spread(run: Run) -> float | None:
    """The largest ratio between the fastest and slowest replicate median of a case in ``run``; ``None`` without replicates."""
    spreads = []
    for m in run.measurements:
        medians = [float(np.median(group)) for group in m.replicate_samples if len(group)]
        if len(medians) >= 2:
            spreads.append(max(medians) / min(medians))
    return max(spreads) if spreads else None


def _latency(base: Measurement, cand: Measurement, threshold: float, seed: int, run_spread: float, replicate_confidence: float
             ) -> Judged:
    if len(base.samples_s) < 2 or len(cand.samples_s) < 2:
        return Judged(None, None, None, None, None, "inconclusive")
    if base.replicates >= 2 and cand.replicates >= 2:
        ratio, low, high = replicate_ratio_interval(base.replicate_samples, cand.replicate_samples, confidence=replicate_confidence)
        judged = _unless_contended(base, cand, verdict(ratio, low, high, threshold))
        return Judged(base.latency_ms, cand.latency_ms, ratio, low, high, judged)
    ratio, low, high = bootstrap_ratio_of_medians(base.samples_s, cand.samples_s, seed=seed)
    judged = verdict(ratio, low / run_spread, high * run_spread, threshold)
    if judged == "inconclusive" and verdict(ratio, low, high, threshold) in ("slower", "faster"):
        judged = ONE_REPLICATE
    return Judged(base.latency_ms, cand.latency_ms, ratio, low / run_spread, high * run_spread, _unless_contended(base, cand, judged))


def _unless_contended(base: Measurement, cand: Measurement, judged: str) -> str:
    """No latency verdict rests on a case that was timed beside other work (either side)."""
    return CONTENDED if base.contended or cand.contended else judged


def _memory(base_mb: float | None, cand_mb: float | None, running: bool, threshold: float) -> tuple[float | None, bool]:
    """``(cand / base, regressed)`` of one memory figure; a growth below :data:`MEMORY_NOISE_FLOOR_MB` is noise."""
    if not (running and base_mb and cand_mb):
        return None, False
    ratio = cand_mb / base_mb
    return ratio, ratio > 1 + threshold and cand_mb - base_mb > MEMORY_NOISE_FLOOR_MB


def _instructions(base: Measurement, cand: Measurement, threshold: float) -> Judged:
    b, c = base.instructions, cand.instructions
    if not b or not c:
        raise UsageError("--metric instructions: a run has no instruction counts (run with --count-instructions)")
    ratio = c / b
    return Judged(b, c, ratio, ratio, ratio, verdict(ratio, ratio, ratio, threshold))


def compare_runs(
    base: Run,
    cand: Run,
    *,
    metric: str = "latency",
    threshold: float | None = None,
    mem_threshold: float = 0.10,
    allow_env_mismatch: bool = False,
    run_spread: float | None = None,
) -> Comparison:
    if metric not in METRICS:
        raise UsageError(f"--metric: unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    threshold = DEFAULT_THRESHOLDS[metric] if threshold is None else threshold
    if threshold <= 0 or mem_threshold <= 0:
        raise UsageError("--threshold and --mem-threshold must be positive")
    if run_spread is not None and run_spread < 1:
        raise UsageError("--run-spread: a factor of at least 1 (1: the runs are as alike as the calls within one)")
    if run_spread is None:
        measured = [spread for spread in (replicate_spread(base), replicate_spread(cand)) if spread is not None]
        run_spread = max(measured) if measured else DEFAULT_RUN_SPREAD
    differences = environment_differences(base.meta.environment, cand.meta.environment)
    if differences and not allow_env_mismatch:
        key, (a, b) = next(iter(differences.items()))
        raise UsageError(f"the runs differ in {key} ({a!r} vs {b!r}); pass --allow-env-mismatch to compare anyway")
    base_cases, cand_cases = base.by_key(), cand.by_key()
    shared = [key for key in base_cases if key in cand_cases]
    if not shared:
        raise UsageError(f"{base.path} and {cand.path} share no case")
    cases = []
    for index, key in enumerate(shared):
        b, c = base_cases[key], cand_cases[key]
        running = b.timed and c.timed
        if not running:
            judged = Judged(b.latency_ms, c.latency_ms, None, None, None, "n/a")
        elif metric == "instructions":
            judged = _instructions(b, c, threshold)
        else:
            judged = _latency(b, c, threshold, seed=index, run_spread=run_spread, replicate_confidence=1 - FAMILY_ERROR / len(shared))
        peak = _memory(b.peak_mem_mb, c.peak_mem_mb, running, mem_threshold)
        resident = _memory(b.resident_mb, c.resident_mb, running, mem_threshold)
        cases.append(
            CaseComparison(
                **asdict(judged), key=key, base_status=b.status.value, cand_status=c.status.value,
                accuracy=accuracy_regression(b, c),
                memory_ratio=peak[0], resident_ratio=resident[0], memory_regressed=peak[1] or resident[1],
            )
        )
    only_base = [k for k in base_cases if k not in cand_cases]
    only_cand = [k for k in cand_cases if k not in base_cases]
    replicated = [k for k in shared if base_cases[k].replicates >= 2 and cand_cases[k].replicates >= 2]
    shared_process = [k for k in replicated if not (base_cases[k].isolated and cand_cases[k].isolated)]
    without_resident = sum(1 for key in shared if base_cases[key].timed and cand_cases[key].timed
                           and None in (base_cases[key].resident_mb, cand_cases[key].resident_mb))
    return Comparison(metric, threshold, cases, only_base, only_cand, differences,
                      run_spread=run_spread if metric == "latency" else None, replicated_cases=len(replicated),
                      shared_process_cases=len(shared_process), without_resident=without_resident)


def case_label(key: tuple) -> str:
    return Case(*key).label
