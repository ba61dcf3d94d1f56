"""Run one case: build, check accuracy, time, measure memory, and return a :class:`Measurement`.

The runner knows implementations only through the registry; every failure
becomes a measurement with a status (``unsupported``, ``oom``, ``error``,
``timeout``, ``inaccurate``) instead of stopping the sweep. The phases of a
case (setup, float64 reference, build and first call, memory call, SDPA-backend
probe, warm-up, sampling, cleanup) are timed into ``notes["phase_s"]``; what else the CPUs did while the
samples were taken is the case's ``contention`` (:mod:`cmgm_bench.measure.contention`).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import time
import traceback

import torch

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.measure import ceilings as ceilings_module
from cmgm_bench.measure import accuracy, allocator, contention, heap, memory
from cmgm_bench.measure.compile_watch import RecompiledDuringTiming, compile_count, inductor_cache_counts
from cmgm_bench.measure.deadline import CaseTimeout, deadline
from cmgm_bench.measure.failures import is_out_of_memory, one_line
from cmgm_bench.measure.measurement import Measurement, Status
from cmgm_bench.measure.prepare import memory_format_of, prepare_case
from cmgm_bench.measure.sdpa_probe import observed_sdpa_backend
from cmgm_bench.measure.timing import CacheFlusher, calls_per_sample, clock_for, collect_samples, sync, warm_up
from cmgm_bench.workload import flops
from cmgm_bench.workload.modes import autograd_context, set_module_mode
from cmgm_bench.workload.reference import make_inputs, reference_module

WARM_UP_S = 0.1  # warm-up: at least two calls and this long, before the first sample
REFERENCE_SHARE = 0.8  # the float64 reference may use this share of the memory available when it starts


class _Draft:
    """The fields of a measurement while its case runs, with the timed phases."""

    def __init__(self, case: Case, fields: dict):
        self.case = case
        self.fields = fields
        self.notes: dict = {}
        self.resident_alive: int | None = None  # memory held with the built implementation alive (measure.memory)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Add the wall time of the block to ``notes["phase_s"][name]``: where a sweep's time goes."""
        started = time.perf_counter()
        try:
            yield
        finally:
            phases = self.notes.setdefault("phase_s", {})
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

    def ended(self, status: Status, error: str | None = None, **fields) -> Measurement:
        return Measurement(self.case, status, error, **{**self.fields, **fields}, notes=self.notes)


class CaseRunner:
    def __init__(self, config: RunConfig, ceilings: ceilings_module.Ceilings | None = None):
        self.config = config
        self.ceilings = ceilings
        self._references: collections.OrderedDict = collections.OrderedDict()

    def known_fields(self, case: Case, impl) -> dict:
        """What is known of a case before it runs: closed-form FLOPs and memory, the floor, the tolerance."""
        return dict(
            flops=flops.flops(case.mode, case.batch, case.tokens, case.dim, case.heads),
            est_mem_mb=flops.estimated_peak_bytes(case.mode, case.batch, case.tokens, case.dim, case.heads, case.dtype) / 2**20,
            threads=torch.get_num_threads(),
            source=impl.source if impl else None,
            tolerance=accuracy.tolerance_for(case.dtype, self.config.tf32, case.device),
            floor_ms=ceilings_module.floor_ms(self.ceilings, case),
        )

    def failed(self, case: Case, status: Status, error: str, notes: dict | None = None) -> Measurement:
        """A case that ended before it was measured (also a child process that died under ``--isolate``)."""
        impl = registry.all_implementations().get(case.impl)
        return Measurement(case, status, error, **self.known_fields(case, impl), notes=notes or {})

    def run(self, case: Case) -> Measurement:
        try:
            impl = registry.get(case.impl)
        except Exception as exc:
            return Measurement(case, Status.ERROR, one_line(exc), **self.known_fields(case, None))
        draft = _Draft(case, self.known_fields(case, impl))
        reason = impl.unsupported_reason(case)
        if reason:
            return draft.ended(Status.UNSUPPORTED, reason)
        scope = self.reference_scope(case)  # decided once: the memory guard counts what the case will compute
        if self.config.memory_guard:
            available = memory.available_bytes(case.device)
            needed = draft.fields["est_mem_mb"] * 2**20 + self._reference_bytes(case, scope)
            if available is not None and needed > 0.9 * available:
                return draft.ended(Status.OOM, f"oom (predicted): needs ~{needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
        started = time.perf_counter()
        with draft.phase("setup"):  # the first case's import of Dynamo (~1 s), never cut short by --timeout:
            import torch._dynamo  # noqa: F401  a half-imported Dynamo would break every later case's clean-up
        try:
            with deadline(self.config.timeout):
                result = self._measure(case, impl, draft, scope)
        except CaseTimeout as exc:
            result = draft.ended(Status.TIMEOUT, str(exc))
        except registry.Unsupported as exc:
            result = draft.ended(Status.UNSUPPORTED, str(exc))
        except Exception as exc:
            status = Status.OOM if is_out_of_memory(exc) else Status.ERROR
            result = draft.ended(status, one_line(exc), traceback=traceback.format_exc())
        finally:
            # TorchDynamo caches compiled code per Python function, across cases: without
            # a reset, a sweep hits its recompile limit and later cases silently run eager.
            with draft.phase("cleanup"):
                try:
                    torch._dynamo.reset()
                    memory.release_memory(case.device)
                    if draft.resident_alive is not None:  # what releasing the implementation gave back
                        released = draft.resident_alive - memory.resident_bytes(case.device)
                        result = result.with_(resident_mb=max(released, 0) / 2**20)
                    heap.freeze_if_imported()
                except Exception as exc:  # the case is measured; a failed clean-up is said, never the sweep's end
                    draft.notes["cleanup_error"] = one_line(exc)
            draft.notes["wall_s"] = time.perf_counter() - started
        return result

    def reference_scope(self, case: Case) -> str:
        """How much of the case the float64 reference can cover in the memory available now: ``full``;
        ``first sample`` (inference only: with running BatchNorm statistics each sample is independent,
        in train mode the batch statistics tie the samples together); or ``none``."""
        available = memory.available_bytes(case.device)
        full = flops.estimated_peak_bytes(case.mode, case.batch, case.tokens, case.dim, case.heads, "float64")
        if available is None or full <= REFERENCE_SHARE * available:
            return "full"
        if case.mode != "train" and case.batch > 1 and full / case.batch <= REFERENCE_SHARE * available:
            return "first sample"
        return "none"

    def _reference_bytes(self, case: Case, scope: str) -> int:
        """Memory of the float64 reference and its kept outputs, counted only on the CPU (on a GPU the
        reference runs and is freed before the implementation is built)."""
        if case.device != "cpu":
            return 0
        full = flops.estimated_peak_bytes(case.mode, case.batch, case.tokens, case.dim, case.heads, "float64")
        return {"full": 2 * full, "first sample": 2 * full // case.batch, "none": 0}[scope]

    def reference(self, case: Case, module, x, y) -> accuracy.ReferenceOutputs | None:
        """The float64 reference of inputs ``x, y`` on the case's device (cached per shape); ``None`` if it does not fit."""
        train = case.mode == "train"
        key = (train, case.device, x.shape[0], case.height, case.width, case.heads, case.dim)
        if key not in self._references:
            if len(self._references) >= 2:
                self._references.popitem(last=False)
            try:
                self._references[key] = accuracy.reference_outputs(module, x, y, train, case.device)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                memory.release_memory(case.device)
                self._references[key] = None
        return self._references[key]

    @staticmethod
    def _errors(draft: _Draft, ref, out, attn_map, x, y, covered: slice, scope: str) -> None:
        """The errors of one call's outputs (and, in train mode, its input gradients) against ``ref``."""
        grad = torch.cat([x.grad.flatten(), y.grad.flatten()]) if draft.case.mode == "train" else None
        with draft.phase("accuracy"):
            if ref is None:
                scope = "none"
                draft.notes["accuracy"] = "not measured: the float64 reference does not fit in memory"
            else:
                draft.fields["errors"] = accuracy.output_errors(out[covered], None if attn_map is None else attn_map[covered], grad, ref)
        draft.fields["accuracy_scope"] = scope

    def _measure(self, case: Case, impl, draft: _Draft, scope: str) -> Measurement:
        device, mode, config, fields, notes = case.device, case.mode, self.config, draft.fields, draft.notes
        with draft.phase("setup"):  # the inputs and the module
            x_cpu, y_cpu = make_inputs(case.batch, case.dim, case.height, case.width, config.seed)
            reference = reference_module(case.dim, case.heads, config.seed, case.height, case.width)
            cache_before = inductor_cache_counts()
        covered = slice(0, 1) if scope == "first sample" else slice(None)
        # Under the tuned allocator the float64 reference comes first. A process timed as a plain process has it
        # (run --allocator system, jemalloc, tcmalloc) runs it after the samples: its blocks, twice the size of
        # the case's, would otherwise shape the heap the timed calls find (glibc raises its mmap threshold to
        # the largest block freed), and the case would be timed faster than a plain process runs it.
        reference_first = allocator.current() == allocator.PINNED

        def float64_reference():
            with draft.phase("reference"):
                return None if scope == "none" else self.reference(
                    case, set_module_mode(copy.deepcopy(reference), mode), x_cpu[covered], y_cpu[covered]
                )

        ref = float64_reference() if reference_first else None

        with draft.phase("build_and_first_call"):
            prepared = prepare_case(case, impl, config.seed)
            step, x, y = prepared.step, prepared.x, prepared.y
            notes.update(prepared.notes)
            fields["variant"] = prepared.variant

        with autograd_context(mode):
            with draft.phase("build_and_first_call"):
                out, attn_map = step()
                sync(device)
            fields["compile_s"] = notes["phase_s"]["build_and_first_call"]
            cache = {key: value - cache_before[key] for key, value in inductor_cache_counts().items()}
            if any(cache.values()):
                notes["inductor_fx_graph_cache"] = cache
            if reference_first:
                self._errors(draft, ref, out, attn_map, x, y, covered, scope)
            fields.update(memory_format=memory_format_of(out), out_dtype=str(out.dtype).replace("torch.", ""))
            del out, attn_map

            # The memory call and the profiled call of the SDPA-backend probe are the
            # first two warm-up calls; warm-up then runs until its 0.1 s are spent.
            clock = clock_for(device)
            warm_start = time.perf_counter()
            if config.memory:
                with draft.phase("memory"):
                    peak = memory.peak_bytes(step, device)
                if prepared.held_bytes:  # memory the calls use that was allocated before them (a graph's pool):
                    notes["held_bytes"] = prepared.held_bytes()  # in resident_mb, never added to the peak
                fields["peak_mem_mb"] = None if peak is None else peak / 2**20
            with draft.phase("sdpa_backend"):
                fields["sdpa_backend"] = observed_sdpa_backend(step)
            with draft.phase("warm_up"):
                warm_up(step, clock, min_calls=0 if config.memory else 1,
                        min_time_s=WARM_UP_S - (time.perf_counter() - warm_start))
            compiles = compile_count()
            flusher = CacheFlusher(device) if config.cold_cache else None
            # A cold cache is flushed before every call, so those cases are timed call by call.
            calls = 1 if flusher else calls_per_sample(step, clock)
            notes["calls_per_sample"] = calls
            with draft.phase("sampling"):
                watch = contention.Watch()
                samples = collect_samples(step, clock, config.stop_rule, before_each=flusher, calls=calls)
                reading = watch.reading()
            if reading is not None:
                fields["contention"] = reading.share
                notes["contention"] = reading.as_notes()
            del flusher
            if compile_count() != compiles:
                raise RecompiledDuringTiming(
                    f"recompiled {compile_count() - compiles} time(s) while being timed; the measurement is invalid"
                )

        if config.memory:  # the implementation alive; what its release gives back is read after the clean-up
            with draft.phase("memory"):
                draft.resident_alive = memory.resident_bytes(device)
        if not reference_first:  # the reference, then one more call to judge
            ref = float64_reference()
            with autograd_context(mode):
                out, attn_map = step()
                sync(device)
                self._errors(draft, ref, out, attn_map, x, y, covered, scope)
                del out, attn_map
        notes.update(cold_cache=config.cold_cache, clock=clock.name)
        errors = fields.get("errors")
        if errors is None or errors.worst <= fields["tolerance"]:
            return draft.ended(Status.OK, samples_s=samples)
        return draft.ended(
            Status.INACCURATE, f"relative error {errors.worst:.3g} above the {case.dtype} tolerance {fields['tolerance']:.3g}",
            samples_s=samples,
        )
