"""What one case produced: the typed record that flows from measuring to storing, comparing and reporting.

A :class:`Measurement` is frozen; later passes (the share of the ceiling,
instruction counts) make a new one with :meth:`Measurement.with_`. Latency
figures are derived from the raw samples, never stored beside them. Only the
results store (:mod:`cmgm_bench.results.store`) turns a measurement into a CSV
row or JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from cmgm_bench.stats import Summary, summarize
from cmgm_bench.config.cases import Case
from cmgm_bench.measure.contention import is_contended


class Status(str, enum.Enum):
    """How a case ended. ``ok`` and ``inaccurate`` cases ran and were timed."""

    OK = "ok"
    INACCURATE = "inaccurate"
    OOM = "oom"
    UNSUPPORTED = "unsupported"
    ERROR = "error"
    TIMEOUT = "timeout"

    @property
    def timed(self) -> bool:
        return self in (Status.OK, Status.INACCURATE)

    def __str__(self) -> str:
        return self.value


TIMED_STATUSES = tuple(status.value for status in Status if status.timed)


@dataclass(frozen=True)
class AccuracyErrors:
    """Errors against the float64 reference: relative L2 and largest absolute difference per output."""

    out_rel_err: float
    out_max_abs_err: float
    attn_rel_err: float | None = None  # None: the output does not exist (feature mode)
    attn_max_abs_err: float | None = None
    grad_rel_err: float | None = None  # train mode only

    @property
    def worst(self) -> float:
        """The largest relative error of the outputs that exist; NaN if none is a number."""
        return worst_relative_error(dataclasses.asdict(self))


CPU_KEYS = ("cpu_model", "cpu_family_model", "cpu_instruction_sets")  # what tells one CPU model from another


def machine_model(description: Mapping[str, Any], device: str = "cpu") -> str:
    """What a series or a case is measured on: ``AMD EPYC 25/17 [avx2_fma,avx512f,avx512_bf16]``, plus `` / GPU``
    for a CUDA case. ``description``: a run's environment or a case's ``Measurement.host`` (both carry
    ``cpu_model``, ``cpu_family_model``, ``cpu_instruction_sets``, ``gpu_name``; older hosts only the model)."""
    cpu = f"{description.get('cpu_model') or 'unknown CPU'} {description.get('cpu_family_model') or ''}".strip()
    sets = description.get("cpu_instruction_sets")
    model = f"{cpu} [{sets}]" if sets else cpu
    gpu = description.get("gpu_name")
    return f"{model} / {gpu}" if device.startswith("cuda") and gpu else model


def worst_relative_error(values: Mapping[str, Any]) -> float:
    """The largest of ``out_rel_err``, ``attn_rel_err``, ``grad_rel_err`` in ``values``, ignoring missing and NaN."""
    found = [values.get(name) for name in ("out_rel_err", "attn_rel_err", "grad_rel_err")]
    numbers = [v for v in found if isinstance(v, (int, float)) and not math.isnan(v)]
    return max(numbers) if numbers else math.nan


@dataclass(frozen=True)
class Measurement:
    """One case's result. Every field but ``case`` and ``status`` may be absent (``None``/empty)."""

    case: Case
    status: Status
    error: str | None = None
    samples_s: tuple[float, ...] = ()  # seconds per call, one per timed sample
    errors: AccuracyErrors | None = None
    tolerance: float | None = None
    accuracy_scope: str | None = None  # "full", "first sample" (the reference fitted for one sample only) or "none"
    flops: int | None = None
    floor_ms: float | None = None
    pct_peak: float | None = None
    peak_mem_mb: float | None = None  # what one call adds (measure.memory)
    resident_mb: float | None = None  # what the built implementation keeps after a call (measure.memory)
    est_mem_mb: float | None = None
    compile_s: float | None = None
    instructions: int | None = None
    # others' work and steal as a share of the cores' time while the case was timed (measure.contention)
    contention: float | None = None
    threads: int | None = None
    sdpa_backend: str | None = None
    memory_format: str | None = None
    out_dtype: str | None = None
    variant: str | None = None
    source: str | None = None
    host: Mapping[str, Any] | None = None  # where the case ran: hostname, CPU model and instruction sets, GPU (machine.env)
    isolated: bool = False  # ran in a child process of its own (--isolate, another allocator, after a CUDA failure)
    replicate_sizes: tuple[int, ...] | None = None  # samples of each replicate in samples_s (run --repeats); None: one
    notes: Mapping[str, Any] = field(default_factory=dict)  # the implementation's and the phases' free-form record
    traceback: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "samples_s", tuple(self.samples_s))
        if self.replicate_sizes is not None:
            object.__setattr__(self, "replicate_sizes", tuple(self.replicate_sizes))

    def with_(self, **changes) -> "Measurement":
        return dataclasses.replace(self, **changes)

    @property
    def timed(self) -> bool:
        return self.status.timed

    @functools.cached_property
    def latency(self) -> Summary | None:
        """Median, IQR, minimum and count of the samples (seconds); ``None`` if nothing was timed."""
        return summarize(self.samples_s) if self.samples_s else None

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else self.latency.median * 1e3

    @property
    def gflops_per_s(self) -> float | None:
        return None if self.latency is None or self.flops is None else self.flops / self.latency.median / 1e9

    @property
    def machine(self) -> str | None:
        """The model of the machine the case ran on, where an executor recorded it (``CPU model / GPU``)."""
        return machine_model(self.host, self.case.device) if self.host else None

    @property
    def contended(self) -> bool:
        """Other work took more than :data:`~cmgm_bench.measure.contention.CONTENDED_SHARE` of the cores while
        the case was timed: its latency is no ground for a verdict."""
        return is_contended(self.contention)

    @property
    def worst_error(self) -> float:
        return math.nan if self.errors is None else self.errors.worst

    @property
    def replicates(self) -> int:
        """How many times the case ran (``run --repeats``): 1 for a plain measurement."""
        return len(self.replicate_sizes or (None,))

    @property
    def replicate_samples(self) -> list[tuple[float, ...]]:
        """The samples of each replicate, in the order they ran (one group for a plain measurement)."""
        sizes = self.replicate_sizes
        if not sizes:
            return [self.samples_s]
        starts = [sum(sizes[:index]) for index in range(len(sizes))]
        return [self.samples_s[start:start + size] for start, size in zip(starts, sizes)]


def merge_replicates(parts: list[Measurement]) -> Measurement:
    """One measurement of a case from its replicates, in the order they ran: the samples of all of them
    (``replicate_sizes`` says which are whose), the worst status, the contention of the most contended
    replicate, the other fields of the first."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    failed = next((part for part in parts if not part.timed), None)
    inaccurate = next((part for part in parts if part.status is Status.INACCURATE), None)
    worst = failed or inaccurate or first
    sizes = tuple(size for part in parts for size in (part.replicate_sizes or [len(part.samples_s)]))
    most_contended = max(parts, key=lambda part: -1.0 if part.contention is None else part.contention)
    notes = dict(first.notes)
    if "contention" in most_contended.notes:
        notes["contention"] = most_contended.notes["contention"]
    return first.with_(
        status=worst.status, error=worst.error, traceback=worst.traceback,
        samples_s=tuple(sample for part in parts for sample in part.samples_s),
        contention=most_contended.contention, notes=notes, replicate_sizes=sizes, isolated=all(part.isolated for part in parts),
    )
