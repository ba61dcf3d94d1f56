"""What an implementation keeps (``resident``) and what one call adds on top (``peak``).

Resident memory: what the built implementation holds after its calls, with its objects
alive (weights in its layout, compiled code, planned buffers, arenas, a CUDA graph's
pool), measured the same way for every implementation: the memory held at the end of
the case's samples, minus the memory held once the implementation is released (its
objects gone, Dynamo's caches reset). Memory that outlives the implementation (modules
its build imported, an export cached on disk, the float64 reference kept for the next
case) is in neither reading, so the figure is the same in a fresh process and in the
tenth case of a sweep. A reading is:

* CPU (Linux, glibc, the ``pinned`` allocator): the process's resident set after
  ``malloc_trim(0)`` (freed heap memory, which the timing policy never trims by itself,
  goes back to the kernel, so the calls' freed blocks do not count) and a garbage
  collection.
  Granularity: pages (4 KiB; a block PyTorch put on a transparent huge page counts in
  2 MiB steps); memory that another thread of the process touches meanwhile counts too.
* CUDA: the device's used memory (``torch.cuda.mem_get_info``, so ONNX Runtime's arena
  and cuDNN's allocations count, not only PyTorch's) after emptying PyTorch's cache of
  unused blocks. Another process on the same GPU meanwhile would count.

Peak memory of one call, above what was allocated before it:

* CUDA: the caching allocator's peak (``reset_peak_memory_stats`` before,
  ``synchronize`` after), minus what was allocated before the call; or, if larger,
  the device memory the call took outside PyTorch and still holds after it (used
  memory's growth less PyTorch's reserved growth: a runtime's arena that grew).
  A runtime whose arena grew on an earlier call allocates nothing new from the
  device: what its calls use is then in the resident figure.
* CPU (Linux): the process's resident-set high-water mark. ``/proc/self/clear_refs``
  resets ``VmHWM`` to the current RSS just before the call, and for the
  duration of the measurement glibc's mmap threshold is lowered so that every
  block of 64 KiB or more is mapped fresh and unmapped on free; the heap then
  cannot hide an allocation behind memory freed by an earlier call. The call runs
  in a thread of its own, so glibc serves it from an arena of its own: in the
  caller's arena, blocks freed while timing (under the steady threshold) stay in
  the free lists and are reused by the measured call, freed back without being
  unmapped, and counted or not by chance; measured so, one case's peak moved by
  whole 8 x N x N maps from call to call (docs/performance.md#gate-memory). This sees
  every allocation that touches memory, oneDNN's scratchpads and workspaces
  included, not only PyTorch's. Transparent huge pages, which the timing calls use
  (:mod:`cmgm_bench.measure.allocator`), are off for the process during the measured call,
  or a block would count in 2 MiB steps by its alignment. Limits: it counts pages (4 KiB granularity),
  includes any memory another thread of the process touches during the call,
  and is unavailable off Linux/glibc (the column is then empty).
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Callable

import torch

from cmgm_bench.measure import allocator

_MEASURE_MMAP_THRESHOLD = 64 * 2**10
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_method_available() -> bool:
    """Linux, glibc, and the pinned allocator (the method moves glibc's thresholds: elsewhere it would change
    the allocator it is meant to leave as a plain process has it)."""
    return allocator.LIBC is not None and _CLEAR_REFS.exists() and allocator.current() == allocator.PINNED


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _in_fresh_thread(function: Callable[[], int]) -> int:
    """``function()`` in a new thread with the caller's autograd state (grad and inference mode are per thread)."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    outcome: dict[str, object] = {}

    def body():
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                outcome["value"] = function()
        except BaseException as exc:  # raised again in the caller: an OOM is the case's result
            outcome["error"] = exc

    thread = threading.Thread(target=body, name="cmgm-memory-call")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def cpu_peak_bytes(call: Callable[[], object]) -> int | None:
    if not cpu_method_available():
        return None
    return _in_fresh_thread(lambda: _rss_peak_bytes(call))


def _rss_peak_bytes(call: Callable[[], object]) -> int:
    gc.collect()
    allocator.set_thresholds(_MEASURE_MMAP_THRESHOLD, 0)
    try:
        with allocator.small_pages():
            allocator.LIBC.malloc_trim(0)
            before = _status_kib("VmRSS")
            _CLEAR_REFS.write_text("5")
            result = call()
            peak = _status_kib("VmHWM")
            del result
    finally:
        allocator.pin_for_timing()
    return max(peak - before, 0) * 1024


def cuda_peak_bytes(call: Callable[[], object], device: str) -> int:
    """Allocated (not reserved) by PyTorch during the call above what was allocated before it, or the device memory
    the call took outside PyTorch and kept (a runtime's arena growing, as ONNX Runtime's does), the larger: the same
    for every implementation; memory held from before (a graph's pool, an arena grown by earlier calls) is in the
    resident figure."""
    torch.cuda.synchronize(device)
    before, reserved_before = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    free_before = torch.cuda.mem_get_info(device)[0]
    torch.cuda.reset_peak_memory_stats(device)
    result = call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    outside = (free_before - torch.cuda.mem_get_info(device)[0]) - (torch.cuda.memory_reserved(device) - reserved_before)
    del result
    return max(peak - before, outside, 0)


def resident_bytes(device: str) -> int | None:
    """What the process holds now, as the resident figure counts it; ``None`` where it cannot be measured."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        return total - free
    if not cpu_method_available():
        return None
    allocator.LIBC.malloc_trim(0)
    return _status_kib("VmRSS") * 1024


def peak_bytes(call: Callable[[], object], device: str) -> int | None:
    """Peak extra memory of one ``call()`` on ``device``; ``None`` where it cannot be measured."""
    if device.startswith("cuda"):
        return cuda_peak_bytes(call, device)
    return cpu_peak_bytes(call)


def available_bytes(device: str) -> int | None:
    """Memory a new case can still use: free device memory on CUDA, ``MemAvailable`` on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_memory(device: str) -> None:
    """Collect garbage and give the CUDA allocator's cached blocks back between cases."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
