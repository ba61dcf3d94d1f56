"""Run one case: build, check accuracy, time, measure memory, and turn it into a record.

The runner knows implementations only through the registry; every failure
becomes a record with a status (``unsupported``, ``oom``, ``error``,
``timeout``, ``inaccurate``) instead of stopping the sweep.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch

from cmgm_bench import accuracy, flops, memory, registry
from cmgm_bench.cases import Case
from cmgm_bench.quiet import native_stderr_silenced
from cmgm_bench.modes import autograd_context, make_step, set_module_mode
from cmgm_bench.reference import make_inputs, reference_module
from cmgm_bench.stats import StopRule, summarize
from cmgm_bench.store import COLUMNS
from cmgm_bench.timing import CacheFlusher, calls_per_sample, clock_for, collect_samples, warm_up


class CaseTimeout(Exception):
    """Raised inside a case that ran past ``--timeout``."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (checked between native calls)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


WARM_UP_S = 0.1  # warm-up: at least two calls and this long, before the first sample


class RecompiledDuringTiming(RuntimeError):
    pass


@dataclass
class RunOptions:
    seed: int = 0
    stop_rule: StopRule = field(default_factory=StopRule)
    cold_cache: bool = False
    measure_memory: bool = True
    memory_guard: bool = True
    tf32: bool = False
    cudnn_benchmark: bool = False
    timeout_s: float | None = None


def compile_count() -> int:
    """How many frames TorchDynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["frames"]["total"]


def inductor_cache_counts() -> dict[str, int]:
    """Inductor's on-disk FX graph cache hits and misses in this process so far. The cache outlives
    the Dynamo reset after each case, so a shape compiled before compiles again in a fraction of the time."""
    from torch._dynamo.utils import counters

    return {"hit": counters["inductor"]["fxgraph_cache_hit"], "miss": counters["inductor"]["fxgraph_cache_miss"]}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


_SDPA_KERNELS = (
    ("_scaled_dot_product_flash_attention_for_cpu", "flash-cpu"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_attention_math", "math"),
)


def observed_sdpa_backend(step) -> str | None:
    """Which scaled-dot-product-attention kernel one call really ran (``None`` if none).

    The backend is told by the ATen operator SDPA dispatched to, which the
    profiler records on the CPU side for every device; tracing the GPU as well
    (CUPTI) would only add its start-up cost to every case.
    """
    with native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    names = {event.name for event in prof.events()}
    found = [label for op, label in _SDPA_KERNELS if any(op in name for name in names)]
    return found[0] if found else None


@contextlib.contextmanager
def phase(record: dict, name: str):
    """Add the wall time of the block to ``record["notes"]["phase_s"][name]``: where a sweep's time goes."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases = record["notes"].setdefault("phase_s", {})
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


def memory_format_of(tensor: torch.Tensor) -> str:
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous" if tensor.is_contiguous() else "strided"


def release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


@dataclass
class PreparedCase:
    """An implementation built for one case, with its inputs and the step to time."""

    module: torch.nn.Module
    fn: object
    x: torch.Tensor
    y: torch.Tensor
    step: object
    notes: dict
    variant: str | None = None


def prepare_case(case: Case, impl, seed: int) -> PreparedCase:
    """Copy the reference to the device in the mode's state, build the implementation, make inputs."""
    module = set_module_mode(copy.deepcopy(reference_module(case.dim, case.heads, seed, case.height, case.width)).to(case.device), case.mode)
    x, y = (t.to(case.device) for t in make_inputs(case.batch, case.dim, case.height, case.width, seed))
    built = impl.build(module, case)
    built = built if isinstance(built, registry.Built) else registry.Built(fn=built)
    if built.prepare_inputs is not None:
        x, y = built.prepare_inputs(x, y)
    x, y = x.detach(), y.detach()
    module = built.module if built.module is not None else module
    step = make_step(built.fn, case.mode, module, x, y)
    return PreparedCase(module, built.fn, x, y, step, dict(built.notes), built.variant)


class CaseRunner:
    def __init__(self, options: RunOptions, ceilings: dict | None = None):
        self.options = options
        self.ceilings = ceilings or {}
        self._references: collections.OrderedDict = collections.OrderedDict()

    # -- the record --------------------------------------------------------
    def base_row(self, case: Case, impl) -> dict:
        row = dict.fromkeys(COLUMNS)
        row.update(case.as_dict())
        n = case.tokens
        row.update(
            tokens=n,
            flops=flops.flops(case.mode, case.batch, n, case.dim, case.heads),
            est_mem_mb=flops.estimated_peak_bytes(case.mode, case.batch, n, case.dim, case.heads, case.dtype) / 2**20,
            threads=torch.get_num_threads(),
            source=impl.source if impl else None,
            tolerance=accuracy.tolerance_for(case.dtype, self.options.tf32 and case.device.startswith("cuda")),
            floor_ms=self.floor_ms(case),
        )
        return row

    def floor_ms(self, case: Case) -> float | None:
        """max(FLOPs / matmul ceiling, minimum bytes / copy bandwidth), in ms."""
        peak = self.ceilings.get("matmul_gflops", {}).get(case.dtype)
        bandwidth = self.ceilings.get("copy_gbytes_per_s")
        if not peak or not bandwidth:
            return None
        n = case.tokens
        compute_s = flops.flops(case.mode, case.batch, n, case.dim, case.heads) / (peak * 1e9)
        memory_s = flops.min_bytes(case.mode, case.batch, n, case.dim, case.heads, case.dtype) / (bandwidth * 1e9)
        return 1e3 * max(compute_s, memory_s)

    def run(self, case: Case) -> dict:
        record = {"row": None, "samples_s": [], "traceback": None, "notes": {}}
        try:
            impl = registry.get(case.impl)
        except Exception as exc:
            impl = None
            record["row"] = {**self.base_row(case, None), "status": "error", "error": one_line(exc)}
            return record
        row = record["row"] = self.base_row(case, impl)
        reason = impl.unsupported_reason(case)
        if reason:
            row.update(status="unsupported", error=reason)
            return record
        if self.options.memory_guard:
            available = memory.available_bytes(case.device)
            needed = row["est_mem_mb"] * 2**20 + self._reference_bytes(case)
            if available is not None and needed > 0.9 * available:
                row.update(status="oom", error=f"oom (predicted): needs ~{needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
                return record
        started = time.perf_counter()
        try:
            with deadline(self.options.timeout_s):
                self._measure(case, impl, record)
        except CaseTimeout as exc:
            row.update(status="timeout", error=str(exc))
        except registry.Unsupported as exc:
            row.update(status="unsupported", error=str(exc))
        except Exception as exc:
            row.update(status="oom" if is_out_of_memory(exc) else "error", error=one_line(exc))
            record["traceback"] = traceback.format_exc()
        finally:
            # TorchDynamo caches compiled code per Python function, across cases: without
            # a reset, a sweep hits its recompile limit and later cases silently run eager.
            with phase(record, "cleanup"):
                torch._dynamo.reset()
                release_memory(case.device)
            record["notes"]["wall_s"] = time.perf_counter() - started
        return record

    def _reference_bytes(self, case: Case) -> int:
        """Memory of the float64 reference, counted only on the CPU: on a GPU a reference
        that does not fit is caught and the case runs without accuracy columns."""
        if case.device != "cpu":
            return 0
        return 2 * flops.estimated_peak_bytes(case.mode, case.batch, case.tokens, case.dim, case.heads, "float64")

    # -- measuring -----------------------------------------------------------
    def reference(self, case: Case, module, x, y) -> accuracy.ReferenceOutputs | None:
        """The float64 reference on the case's device (cached per shape); ``None`` if it does not fit."""
        train = case.mode == "train"
        key = (train, case.device, case.batch, case.height, case.width, case.heads, case.dim)
        if key not in self._references:
            if len(self._references) >= 2:
                self._references.popitem(last=False)
            try:
                self._references[key] = accuracy.reference_outputs(module, x, y, train, case.device)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                release_memory(case.device)
                self._references[key] = None
        return self._references[key]

    def _measure(self, case: Case, impl, record: dict) -> None:
        row, device, mode = record["row"], case.device, case.mode
        x_cpu, y_cpu = make_inputs(case.batch, case.dim, case.height, case.width, self.options.seed)
        reference = reference_module(case.dim, case.heads, self.options.seed, case.height, case.width)
        with phase(record, "reference"):
            ref = self.reference(case, set_module_mode(copy.deepcopy(reference), mode), x_cpu, y_cpu)

        cache_before = inductor_cache_counts()
        with phase(record, "build_and_first_call"):
            prepared = prepare_case(case, impl, self.options.seed)
            step, x, y = prepared.step, prepared.x, prepared.y
            record["notes"].update(prepared.notes)
            row["variant"] = prepared.variant

        with autograd_context(mode):
            with phase(record, "build_and_first_call"):
                out, attn_map = step()
                sync(device)
            row["compile_s"] = record["notes"]["phase_s"]["build_and_first_call"]
            cache = {key: value - cache_before[key] for key, value in inductor_cache_counts().items()}
            if any(cache.values()):
                record["notes"]["inductor_fx_graph_cache"] = cache
            grad = None
            if mode == "train":
                grad = torch.cat([x.grad.flatten(), y.grad.flatten()])
            if ref is None:
                record["notes"]["accuracy"] = "not measured: the float64 reference did not fit in memory"
            else:
                row.update(accuracy.output_errors(out, attn_map, grad, ref))
            row.update(memory_format=memory_format_of(out), out_dtype=str(out.dtype).replace("torch.", ""))
            del out, attn_map, grad

            # The memory call and the profiled call of the SDPA-backend probe are the
            # first two warm-up calls; warm-up then runs until its 0.1 s are spent.
            clock = clock_for(device)
            warm_start = time.perf_counter()
            if self.options.measure_memory:
                with phase(record, "memory"):
                    peak = memory.peak_bytes(step, device)
                row["peak_mem_mb"] = None if peak is None else peak / 2**20
            with phase(record, "sdpa_backend"):
                row["sdpa_backend"] = observed_sdpa_backend(step)
            with phase(record, "warm_up"):
                warm_up(step, clock, min_calls=0 if self.options.measure_memory else 1,
                        min_time_s=WARM_UP_S - (time.perf_counter() - warm_start))
            compiles = compile_count()
            flusher = CacheFlusher(device) if self.options.cold_cache else None
            # A cold cache is flushed before every call, so those cases are timed call by call.
            calls = 1 if flusher else calls_per_sample(step, clock)
            record["notes"]["calls_per_sample"] = calls
            with phase(record, "sampling"):
                samples = collect_samples(step, clock, self.options.stop_rule, before_each=flusher, calls=calls)
            del flusher
            if compile_count() != compiles:
                raise RecompiledDuringTiming(
                    f"recompiled {compile_count() - compiles} time(s) while being timed; the measurement is invalid"
                )

        summary = summarize(samples)
        record["samples_s"] = samples
        record["notes"]["cold_cache"] = self.options.cold_cache
        record["notes"]["clock"] = clock.name
        row.update(
            latency_ms=summary.median * 1e3,
            latency_iqr_ms=summary.iqr * 1e3,
            latency_min_ms=summary.minimum * 1e3,
            samples=summary.count,
            gflops_per_s=row["flops"] / summary.median / 1e9,
        )
        worst = accuracy.worst_relative_error(row)
        row["status"] = "ok" if ref is None or worst <= row["tolerance"] else "inaccurate"
        if row["status"] == "inaccurate":
            row["error"] = f"relative error {worst:.3g} above the {case.dtype} tolerance {row['tolerance']:.3g}"

