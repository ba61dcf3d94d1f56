"""The CPU allocator every timing process uses: glibc's thresholds pinned, freed memory kept, huge pages.

A CMGM call at PGNet's shape allocates and frees several 8 x N x N float32 maps
(tens to hundreds of MiB each). With glibc's defaults each call got much of
that memory afresh from the kernel and faulted it in, 4 KiB at a time, and how
much depended on the process's heap history, so the same case moved from
process to process by far more than the changes a gate must see
(docs/performance.md#page-faults has the counts). Timing processes therefore:

* pin glibc's mmap threshold at 32 MiB, its steady-state ceiling (left alone,
  glibc raises it as large blocks are freed, so a run's first cases would be
  timed with a different allocator than its later ones);
* never trim the heap: freed memory stays in the process, as a caching allocator
  (ONNX Runtime's arena, PyTorch's CUDA allocator, jemalloc) keeps it;
* ask PyTorch to put its CPU blocks of 2 MiB or more on transparent huge pages
  (``THP_MEM_ALLOC_ENABLE=1``, read once, at PyTorch's first large allocation,
  so it is set when this module is imported; a user's own value is kept): the
  blocks above the mmap threshold are still mapped per call, but fault in 2 MiB
  at a time.

:func:`policy` says what is in effect, for results.json's environment.

That is the ``pinned`` allocator, every case's default. A case may instead be timed
as a plain process would run it (``run --allocator``; the case key's
``allocator``): ``system`` (glibc as it comes, no huge-page request), ``jemalloc``
or ``tcmalloc`` (preloaded from Debian's ``libjemalloc2`` or
``libtcmalloc-minimal4``). Those run in a child process of their own
(:mod:`cmgm_bench.execution.isolate`), told by :data:`ALLOCATOR_ENV`, where this
module then changes nothing; their peak memory is not measured, because the
method (:mod:`cmgm_bench.measure.memory`) works through glibc's thresholds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

import torch

from cmgm_bench.config.cases import DEFAULT_ALLOCATOR as PINNED

ALLOCATOR_ENV = "CMGM_BENCH_ALLOCATOR"  # set in a child process that times under another allocator than pinned
# allocator -> (the shared library to preload, the Debian package that has it)
PRELOADED = {"jemalloc": ("libjemalloc.so.2", "libjemalloc2"), "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4")}


def current() -> str:
    """The allocator this process times under."""
    return os.environ.get(ALLOCATOR_ENV, PINNED)


THP_ENV = "THP_MEM_ALLOC_ENABLE"
if current() == PINNED:
    os.environ.setdefault(THP_ENV, "1")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
STEADY_MMAP_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its dynamic threshold
_NEVER_TRIM = -1  # mallopt's value for "never give the heap's free top back to the kernel"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_PR_SET_THP_DISABLE = 41


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


LIBC = _libc()


def set_thresholds(mmap_threshold: int, trim_threshold: int) -> None:
    """glibc's mmap and trim thresholds (``mallopt``); no-op off glibc."""
    if LIBC is not None:
        LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold)


def pin_for_timing() -> None:
    """The thresholds every timed call runs under: mmap above 32 MiB, the heap never trimmed (in a process that
    times under another allocator, nothing: it stays as a plain process has it)."""
    if current() == PINNED:
        set_thresholds(STEADY_MMAP_THRESHOLD, _NEVER_TRIM)


def library_path(name: str) -> Path | None:
    """Where the shared library of a preloaded allocator is on this machine; ``None`` if it is not installed."""
    library = PRELOADED[name][0]
    folders = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")  # Debian's, others'
    return next((Path(folder) / library for folder in folders if (Path(folder) / library).exists()), None)


def missing(name: str) -> str | None:
    """Why a case cannot be timed under allocator ``name`` here, with the install hint; ``None`` if it can."""
    if name in PRELOADED and library_path(name) is None:
        library, package = PRELOADED[name]
        return f"{name}: {library} is not installed (apt-get install {package})"
    if name != PINNED and LIBC is None:
        return f"{name}: needs Linux with glibc"
    return None


def child_environment(name: str) -> dict[str, str]:
    """The environment of a child process that times under allocator ``name``."""
    environment = {key: value for key, value in os.environ.items() if key != ALLOCATOR_ENV}
    if name == PINNED:
        return environment
    environment.pop(THP_ENV, None)  # a plain process asks for no huge pages
    environment.pop("LD_PRELOAD", None)
    environment[ALLOCATOR_ENV] = name
    if name in PRELOADED:
        environment["LD_PRELOAD"] = str(library_path(name))
    return environment


def loaded_library(name: str) -> bool:
    """Whether allocator ``name``'s library is mapped into this process (a preload that took)."""
    library = PRELOADED[name][0]
    return any(library in line for line in Path("/proc/self/maps").read_text().splitlines())


@contextlib.contextmanager
def small_pages():
    """No transparent huge pages for the process meanwhile (``prctl(PR_SET_THP_DISABLE)``): peak memory is
    counted in resident pages, and a block on huge pages would count in whole 2 MiB steps, by its alignment."""
    disabled = LIBC is not None and LIBC.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if disabled:
            LIBC.prctl(_PR_SET_THP_DISABLE, 0, 0, 0, 0)


def _anon_huge_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@functools.cache
def huge_pages() -> str:
    """Whether PyTorch's large CPU blocks land on transparent huge pages in this process, and if not, why."""
    if os.environ.get(THP_ENV) != "1":
        return f"off ({THP_ENV}={os.environ.get(THP_ENV)})"
    try:
        mode = _THP_MODE.read_text().split("[")[1].split("]")[0]
        before = _anon_huge_kib()
    except (OSError, IndexError):
        return "off (no transparent huge pages on this system)"
    if mode == "never":
        return f"off ({_THP_MODE} is never)"
    probe = torch.ones(4 * 2**20)  # 16 MiB: holds whole 2 MiB pages however it is aligned
    gained = _anon_huge_kib() - before
    del probe
    return "on" if gained >= 2048 else "off (PyTorch allocated before it was asked to use them)"


def policy() -> str | None:
    """What :func:`pin_for_timing` and the huge-page request make of the allocator; None off glibc."""
    if LIBC is None:
        return None
    if current() != PINNED:
        return f"{current()}: as a plain process has it"
    return f"glibc: mmap threshold {STEADY_MMAP_THRESHOLD >> 20} MiB, heap never trimmed; huge pages for blocks >= 2 MiB: {huge_pages()}"
