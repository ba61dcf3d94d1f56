"""The machine's measured ceilings: matmul throughput per dtype and copy bandwidth.

Measured once at the start of a run with the threads the run uses, and stored
in ``results.json`` so that ``pct_peak`` and ``floor_ms`` can be recomputed.

Each rate is the best of several short timings (a shared machine drifts between
fast and slow periods; the fast one is the machine's ceiling). Two matmul
ceilings per dtype: the *native* rate of a matmul in that dtype, and the
*effective* one, the best rate the machine reaches for that dtype's
arithmetic by any path: a CPU without bfloat16 or float16 units emulates them
far below its float32 rate, and an implementation may simply compute in
float32, so the effective ceiling is never below float32's. ``pct_peak`` uses
the effective ceiling; a case that still beats it raises it to the case's own
rate (noted in the run), so no share is ever above 100 %.

Each device's :class:`Ceilings` name the machine model they were measured on.
The local executor measures them in the driver; a remote executor's worker
measures its own machine's (once per worker process) and returns them beside
the case; the run's metadata keeps them per machine model
(:class:`~cmgm_bench.results.run_meta.RunMeta`), and each case is accounted
against the ceilings of the machine it ran on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

import torch

from cmgm_bench.stats import StopRule, summarize
from cmgm_bench.measure.timing import calls_per_sample, clock_for, collect_samples, warm_up
from cmgm_bench.workload import flops

_RULE = StopRule(min_samples=5, min_time_s=0.1, max_time_s=0.5, target_rel_iqr=0.05)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _best_seconds(fn, device: str) -> float:
    """The fastest sample of ``fn``, each sample a block lasting at least the clock's ``min_block_s`` (on CUDA a
    millisecond: one synchronised call of a fast matmul would time the host's launch, not the GPU)."""
    clock = clock_for(device)
    warm_up(fn, clock)
    return summarize(collect_samples(fn, clock, _RULE, calls=calls_per_sample(fn, clock))).minimum


def matmul_size_limits(device: str) -> tuple[int, float]:
    """The largest side tried and the call time that stops the doubling earlier: a GPU reaches its matmul rate
    only at large sides (an H200's bfloat16 at 4096^3 is a 0.2 ms call, well below its 8192^3 rate); on a CPU an
    emulated dtype (1 GFLOP/s) is measured small instead of spending seconds a call."""
    return (8192, 5e-3) if device.startswith("cuda") else (1024, 0.02)


def matmul_gflops(device: str, dtype: str) -> tuple[float, int] | None:
    """Best-case GFLOP/s of a square matmul and the side it was measured at; ``None`` if the dtype has no matmul here.

    The side doubles from 256 until one call lasts the device's stop time or the side reaches its largest
    (:func:`matmul_size_limits`); the rate is the best of blocked samples at that side.
    """
    largest, long_call_s = matmul_size_limits(device)
    clock = clock_for(device)
    n = 256
    try:
        while True:
            a = torch.randn(n, n, device=device).to(_DTYPES[dtype])
            b = torch.randn(n, n, device=device).to(_DTYPES[dtype])
            clock.time_call(lambda: torch.mm(a, b))  # the first call of a side loads its kernel
            seconds = clock.time_call(lambda: torch.mm(a, b))
            if n >= largest or seconds >= long_call_s:
                break
            n *= 2
        seconds = _best_seconds(lambda: torch.mm(a, b), device)
    except RuntimeError:
        return None
    return 2 * n**3 / seconds / 1e9, n


def copy_gbytes_per_s(device: str) -> float:
    """Read+write bandwidth of a large device-to-device copy."""
    nbytes = (1024 if device.startswith("cuda") else 256) * 2**20
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device)
    return 2 * nbytes / seconds / 1e9


def effective(native: dict) -> dict:
    """Per dtype, the best of its native matmul rate and float32's (an implementation may upcast)."""
    floor = native.get("float32") or 0.0
    return {dtype: max(value or 0.0, floor) or None for dtype, value in native.items()}


def emulated(native: dict) -> list[str]:
    """Dtypes whose native matmul is slower than float32's: no native support on this machine."""
    floor = native.get("float32") or 0.0
    return sorted(dtype for dtype, value in native.items() if dtype != "float32" and (value or 0.0) < floor)


@dataclass(frozen=True)
class Ceilings:
    """One device's measured ceilings on one machine model (``run.json``'s ``ceilings``; docs/design.md, "Contracts")."""

    matmul_gflops: Mapping[str, float | None] = field(default_factory=dict)  # effective, per dtype
    matmul_gflops_native: Mapping[str, float | None] = field(default_factory=dict)
    copy_gbytes_per_s: float | None = None
    machine: str | None = None  # the machine model they were measured on (None: an older run)
    matmul_side: Mapping[str, int | None] = field(default_factory=dict)
    method: str | None = None  # how they were measured (None: an older run)
    emulated: tuple[str, ...] = ()
    raised: Mapping[str, dict] = field(default_factory=dict)  # dtype -> {"from", "to", "by"}: a case beat the ceiling
    measured_at: str | None = None  # UTC ISO time of the measurement; a reused one keeps its own (None: an older run)

    @classmethod
    def from_json(cls, values: Mapping) -> "Ceilings":
        known = {f.name for f in dataclasses.fields(cls)}
        found = {key: value for key, value in values.items() if key in known}
        return cls(**{**found, "emulated": tuple(found.get("emulated") or ())})

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "emulated": list(self.emulated)}


def measure(device: str, dtypes, machine: str | None = None) -> Ceilings:
    """Native and effective matmul GFLOP/s per dtype (float32 always), the side each was measured at, emulated
    dtypes, copy GB/s, how they were measured, and the model of the machine they were measured on."""
    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    matmuls = {dtype: matmul_gflops(device, dtype) for dtype in sorted(set(dtypes) | {"float32"})}
    native = {dtype: None if found is None else found[0] for dtype, found in matmuls.items()}
    clock = clock_for(device)
    return Ceilings(
        machine=machine,
        measured_at=measured_at,
        matmul_gflops=effective(native),
        matmul_gflops_native=native,
        matmul_side={dtype: None if found is None else found[1] for dtype, found in matmuls.items()},
        method=f"best of blocked samples ({clock.name}, blocks of >= {clock.min_block_s * 1e3:g} ms)"
               " of a square matmul, the side doubled from 256",
        emulated=tuple(emulated(native)),
        copy_gbytes_per_s=copy_gbytes_per_s(device),
    )


def account(ceilings: Ceilings | None, measurement) -> tuple[object, Ceilings | None]:
    """``(measurement with pct_peak, raised)``: the share of the effective ceiling of its dtype, and, where the
    measurement's rate beats that ceiling, the ceilings with it raised to the rate (noted under ``raised``; its
    share is then 100 %), else ``None``."""
    achieved = measurement.gflops_per_s
    peaks = ceilings.matmul_gflops if ceilings is not None else {}
    dtype = measurement.case.dtype
    peak = peaks.get(dtype)
    if achieved is None or not peak:
        return measurement.with_(pct_peak=None), None
    if achieved <= peak:
        return measurement.with_(pct_peak=100 * achieved / peak), None
    case = measurement.case
    note = {"from": peak, "to": achieved, "by": f"{case.impl} {case.mode} {case.shape_label}"}
    raised = dataclasses.replace(ceilings, matmul_gflops={**peaks, dtype: achieved}, raised={**ceilings.raised, dtype: note})
    return measurement.with_(pct_peak=100.0), raised


def floor_ms(ceilings: Ceilings | None, case) -> float | None:
    """The case's lower bound at this machine's ceilings: max(FLOPs / matmul ceiling, minimum bytes / copy bandwidth), in ms."""
    if ceilings is None:
        return None
    peak = ceilings.matmul_gflops.get(case.dtype)
    bandwidth = ceilings.copy_gbytes_per_s
    if not peak or not bandwidth:
        return None
    args = (case.mode, case.batch, case.tokens, case.dim, case.heads)
    compute_s = flops.flops(*args) / (peak * 1e9)
    memory_s = flops.min_bytes(*args, case.dtype) / (bandwidth * 1e9)
    return 1e3 * max(compute_s, memory_s)
