"""The fused C++ kernels: named instruction-set targets, one build per target, loaded only where they run.

The kernels (``csrc/``) are compiled with ``torch.utils.cpp_extension`` for a
named target, never ``-march=native``:

* ``x86-64-v4``: AVX-512 (F, BW, CD, DQ, VL), 32 zmm registers;
* ``x86-64-v3``: AVX2 + FMA, 16 ymm registers (every x86 CPU of the last decade);
* ``portable``: the compiler's baseline for the machine (no ``-march``).

The extension's name carries the target and the compiler, so torch's
extension cache never hands a build for one CPU to another (a shared home, a
container image or a CI cache used on another machine). A target whose
instructions this CPU lacks is refused with the reason, before any build.
``best_target()`` is the widest target the CPU runs; ``$CMGM_FUSED_TARGET``
overrides it (to measure the AVX2 path on an AVX-512 machine, say).
Building is an explicit step (:func:`load`) that returns its time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cmgm_bench.machine import cpu_features

SOURCES = [
    Path(__file__).parent / "csrc" / name
    for name in ("fused_map.cpp", "softmax_attention.cpp", "pool.cpp", "forward.cpp", "operators.cpp")
]
TARGET_ENV = "CMGM_FUSED_TARGET"


@dataclass(frozen=True)
class Target:
    name: str
    cflags: tuple[str, ...]
    cpu_flags: tuple[str, ...]  # /proc/cpuinfo flags the target's instructions need
    x86: bool = True
    streaming_stores: bool = True  # the kernels' non-temporal stores (simd.h: kStreamingStores), AVX2 and AVX-512 builds


TARGETS = {
    target.name: target
    for target in (
        Target("x86-64-v4", ("-march=x86-64-v4", "-mtune=generic"), ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
        Target("x86-64-v3", ("-march=x86-64-v3", "-mtune=generic"), ("avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe")),
        Target("portable", (), (), x86=False, streaming_stores=False),
    )
}


def compiler() -> str:
    return os.environ.get("CXX", "c++")


def compiler_problem(purpose: str = "the fused kernels") -> str | None:
    """Why no C++ compiler is at hand to build ``purpose``, or ``None``."""
    return None if shutil.which(compiler()) else f"no C++ compiler ({compiler()}) to build {purpose}"


@functools.lru_cache(maxsize=None)
def compiler_tag(name: str) -> str:
    """``gcc12_2_0``-like: the compiler's name and version, or a digest of its ``--version``."""
    result = subprocess.run([name, "--version"], capture_output=True, text=True)
    first = result.stdout.splitlines()[0] if result.stdout else name
    match = re.search(r"(gcc|g\+\+|clang)[^\d]*(\d+(?:\.\d+)*)", first, re.IGNORECASE) or re.search(r"(\w+).*?(\d+\.\d+(?:\.\d+)*)", first)
    if match:
        return re.sub(r"\W", "_", f"{match.group(1).replace('g++', 'gcc')}{match.group(2)}").lower()
    return "cxx" + hashlib.sha256(first.encode()).hexdigest()[:8]


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def target_problem(name: str) -> str | None:
    """Why code built for target ``name`` cannot run on this CPU, or ``None``."""
    if name not in TARGETS:
        return f"unknown kernel target {name!r} (known: {', '.join(TARGETS)})"
    target = TARGETS[name]
    if target.x86 and not is_x86():
        return f"{name} is an x86 target and this CPU is {platform.machine()}"
    missing = [flag for flag in target.cpu_flags if flag not in cpu_features.flags()]
    return f"this CPU lacks {', '.join(missing)}, which {name} needs" if missing else None


def best_target() -> str:
    """``$CMGM_FUSED_TARGET`` if set, else the widest target this CPU runs."""
    chosen = os.environ.get(TARGET_ENV)
    if chosen:
        return chosen
    candidates = ("x86-64-v4", "x86-64-v3") if is_x86() else ()
    return next((name for name in candidates if target_problem(name) is None), "portable")


def extension_name(name: str) -> str:
    return f"cmgm_fused_{name.replace('-', '_')}_{compiler_tag(compiler())}"


@functools.lru_cache(maxsize=None)
def _build(name: str):
    """Compile (or load from torch's extension cache) and return the operators' namespace, ``torch.ops.<extension>``.

    The kernels register as torch operators through LibTorch's stable ABI
    (``STABLE_TORCH_LIBRARY`` in ``operators.cpp`` and ``forward.cpp``, which calls ATen's
    operators through its C shims); the kernel files include no torch header at all.
    Each file compiles in under 2 s, the build takes ~4.3 s on two cores (~10 s with
    ``torch/library.h`` and ATen's headers, ~30 s with pybind11).
    The namespace is the extension's name, so two targets load side by side in one process.
    """
    import torch
    from torch.utils import cpp_extension

    namespace = extension_name(name)
    cpp_extension.load(
        name=namespace,
        sources=[str(path) for path in SOURCES],
        extra_cflags=["-O3", "-fopenmp", f"-DCMGM_NAMESPACE={namespace}", *TARGETS[name].cflags],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    return getattr(torch.ops, namespace)


STABLE_ABI_SINCE = (2, 10)  # torch::stable::get_num_threads and new_empty(..., dtype), which operators.cpp uses


def torch_problem(version: str | None = None) -> str | None:
    """Why this torch cannot build the kernels (they register through LibTorch's stable ABI of torch >= 2.10), or ``None``."""
    import torch
    from torch.torch_version import TorchVersion

    version = version or torch.__version__
    if TorchVersion(version) < STABLE_ABI_SINCE:
        return f"the fused kernels need torch >= {'.'.join(map(str, STABLE_ABI_SINCE))} (LibTorch's stable ABI), this is {version}"
    return None


def problem(name: str) -> str | None:
    """Why the kernels cannot be built for ``name`` here (no compiler, an older torch, a CPU without the target), or ``None``."""
    return compiler_problem() or torch_problem() or target_problem(name)


def load(name: str):
    """``(operators, seconds)``: the kernels built for target ``name`` (compiled, or loaded from torch's cache).

    Raises ``RuntimeError`` with the reason when the target cannot run here;
    a failing build raises the compiler's error.
    """
    reason = problem(name)
    if reason:
        raise RuntimeError(reason)
    started = time.perf_counter()
    operators = _build(name)
    return operators, time.perf_counter() - started
