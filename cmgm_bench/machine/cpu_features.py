"""What this CPU is and which instruction sets it has, read at run time.

Numbers from one CPU do not carry to another: a run records the vendor, the
model and the instruction sets that decide which code paths are fast
(AVX2+FMA, AVX-512F, AVX512-BF16, AMX). On Linux they come from the kernel's
``/proc/cpuinfo`` flags, which say what the CPU offers *and* the kernel
enables (AMX needs both); elsewhere from PyTorch's own dispatch level.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

# Instruction sets that change which code path is fast, by their /proc/cpuinfo flag(s).
INSTRUCTION_SETS = {
    "avx2_fma": ("avx2", "fma"),
    "avx512f": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),
    "amx_bf16": ("amx_bf16", "amx_tile"),
    "amx_fp16": ("amx_fp16", "amx_tile"),
}


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return fields


@functools.lru_cache(maxsize=1)
def flags() -> frozenset[str]:
    return frozenset(_cpuinfo_fields().get("flags", "").split())


def has(feature: str) -> bool:
    """Whether the CPU has ``feature``, a key of :data:`INSTRUCTION_SETS`."""
    cpu_flags = flags()
    if cpu_flags:
        return all(flag in cpu_flags for flag in INSTRUCTION_SETS[feature])
    capability = torch.backends.cpu.get_cpu_capability()  # no cpuinfo: what PyTorch dispatches to
    return {"avx2_fma": capability in ("AVX2", "AVX512"), "avx512f": capability == "AVX512"}.get(feature, False)


# The libraries can be told to use less than the CPU offers (as on an AVX2-only CPU); below AVX-512 they have no
# bfloat16 instructions, whatever the CPU has.
_BELOW_AVX512 = {"ATEN_CPU_CAPABILITY": ("DEFAULT", "AVX2"), "DNNL_MAX_CPU_ISA": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")}


# Every variable that holds one of PyTorch's libraries (ATen, MKL, oneDNN) to a narrower instruction set.
LIBRARY_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA")


def library_isa_caps() -> dict[str, str]:
    """The instruction-set caps set in this process's environment, ``{}`` when the libraries use what the CPU has."""
    return {name: os.environ[name] for name in LIBRARY_ISA_VARIABLES if os.environ.get(name)}


def library_isa_cap() -> str | None:
    """``NAME=VALUE`` of an environment variable that keeps PyTorch's or oneDNN's kernels below AVX-512; ``None``."""
    for name, value in library_isa_caps().items():
        if value.strip().upper() in _BELOW_AVX512.get(name, ()):
            return f"{name}={value.strip()}"
    return None


def _native(*features: str) -> bool:
    """Whether the CPU has any of ``features`` and the libraries are not kept below AVX-512 (:func:`library_isa_cap`)."""
    return any(has(feature) for feature in features) and library_isa_cap() is None


def native_bfloat16() -> bool:
    """Whether bfloat16 arithmetic runs natively (AVX512-BF16 or AMX-BF16) rather than emulated."""
    return _native("avx512_bf16", "amx_bf16")


def emulated_dtypes() -> tuple[str, ...]:
    """The reduced-precision dtypes whose matmuls this CPU emulates below its float32 rate: bfloat16 without
    AVX512-BF16 or AMX-BF16 (:func:`native_bfloat16`), float16 without AMX-FP16 (AVX512-FP16 alone does not make
    PyTorch's float16 matmul faster than float32's: measured equal on a CPU with it)."""
    native = {"bfloat16": native_bfloat16(), "float16": _native("amx_fp16")}
    return tuple(dtype for dtype, fast in native.items() if not fast)


@functools.lru_cache(maxsize=1)
def describe() -> dict:
    """Vendor, model and instruction sets, as stored in a run's environment."""
    fields = _cpuinfo_fields()
    return {
        "cpu_vendor": fields.get("vendor_id") or platform.processor() or None,
        "cpu_model": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields and "model" in fields else None,
        "cpu_instruction_sets": ",".join(name for name in INSTRUCTION_SETS if has(name)) or "none of " + ",".join(INSTRUCTION_SETS),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def fingerprint() -> str:
    """A short digest of the CPU model and every flag: code built for one CPU is keyed by it."""
    described = describe()
    text = f"{described['cpu_vendor']}|{described['cpu_model']}|{' '.join(sorted(flags()))}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]
