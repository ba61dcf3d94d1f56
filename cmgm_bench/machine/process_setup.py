"""One set-up for every process that times a case: threads, CUDA arithmetic, the allocator.

``run``, ``ab``, ``profile`` and each ``--isolate`` child call
:func:`prepare_process`, so they all time the same arithmetic: TF32 and
cuDNN autotuning are recorded settings (off unless asked for), never the
process's defaults (cuDNN allows TF32 convolutions by default).

TF32 is set through the ``allow_tf32`` flags, the API that torch's own code
still reads: on torch 2.13, setting cuDNN's ``fp32_precision`` to ``"ieee"``
makes every later read of ``torch.backends.cudnn.allow_tf32`` raise (a "mix of
the legacy and new APIs"), and ``torch.export`` and the ONNX exporter read it,
so the deployment runtimes could not export in a process set up that way. The
flags set both views consistently (``fp32_precision`` reads ``ieee``/``tf32``
after them), and both are recorded.

Inductor's C++ backend checks each vector instruction set the CPU reports by
compiling and loading a probe that includes ATen's vector headers: ~2 s per set,
~6 s before the first ``torch.compile`` of a fresh machine (they are cached per
machine afterwards). :func:`trust_cpu_flags_for_inductor` sets
``TORCHINDUCTOR_VEC_ISA_OK=1`` unless the user set it: Inductor then takes the
sets the CPU reports (its own CPUID check), and still compiles the small probes
for the optional extensions (AVX512-BF16, VNNI, AMX), so a compiler without them
still loses them. The same instruction set is chosen either way.

Where the libraries are held to a narrower instruction set (``ATEN_CPU_CAPABILITY``,
``MKL_ENABLE_INSTRUCTIONS``, ``DNNL_MAX_CPU_ISA``), :func:`key_compile_caches_by_library_isa`
adds those caps to the compile caches' key, so that a graph compiled under other caps is
never reused.
"""

from __future__ import annotations

import os
import sys

import torch

from cmgm_bench.machine import cpu_features
from cmgm_bench.measure import allocator
from cmgm_bench.config.run_config import check_threads


def configure_threads(threads: int | None) -> int:
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def configure_cuda(tf32: bool, cudnn_benchmark: bool) -> None:
    """TF32 for float32 matmuls and convolutions, and cuDNN autotuning, exactly as asked."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def cuda_arithmetic() -> dict:
    """What the process's float32 matmuls and convolutions use, as both APIs of this torch report it."""
    state = {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        state["fp32_precision_matmul"] = torch.backends.cuda.matmul.fp32_precision
        state["fp32_precision_cudnn_conv"] = torch.backends.cudnn.conv.fp32_precision
    return state


VEC_ISA_ENV = "TORCHINDUCTOR_VEC_ISA_OK"


def trust_cpu_flags_for_inductor() -> None:
    """Skip Inductor's per-instruction-set compile probe, unless the user chose (``$TORCHINDUCTOR_VEC_ISA_OK``)."""
    if VEC_ISA_ENV in os.environ:
        return
    os.environ[VEC_ISA_ENV] = "1"  # read when Inductor's config is imported, here and in its compile workers
    config = sys.modules.get("torch._inductor.config")
    if config is not None and config.cpp.vec_isa_ok is None:
        config.cpp.vec_isa_ok = True


CACHE_KEY_TAG_ENV = "TORCH_COMPILE_CACHE_KEY_TAG"


def key_compile_caches_by_library_isa() -> None:
    """Add the libraries' instruction-set caps (``cpu_features.library_isa_caps``) to the key of PyTorch's compile
    caches (``torch.compiler.config.cache_key_tag``, read by this process and, through its environment, by its
    children): Inductor's graph cache does not key on them, and a graph compiled without the caps, reused under
    ``DNNL_MAX_CPU_ISA=AVX2`` and its kin, computed NaN. Without caps the tag is left as it is."""
    caps = cpu_features.library_isa_caps()
    if not caps:
        return
    ours = "isa-caps:" + ",".join(f"{name}={value}" for name, value in sorted(caps.items()))
    tag = os.environ.get(CACHE_KEY_TAG_ENV, "")
    if ours not in tag.split("|"):
        tag = f"{tag}|{ours}" if tag else ours
        os.environ[CACHE_KEY_TAG_ENV] = tag
    import torch.compiler.config

    torch.compiler.config.cache_key_tag = tag


def inductor_isa_check() -> str:
    """How Inductor decides which vector instruction sets it may use in a timing process (one that ran
    :func:`prepare_process`, or would: unset means trusted), as recorded in the environment."""
    value = os.environ.get(VEC_ISA_ENV, "1")
    if value == "1":
        return "CPU flags trusted (TORCHINDUCTOR_VEC_ISA_OK=1)"
    if value == "0":
        return "vectorisation off (TORCHINDUCTOR_VEC_ISA_OK=0)"
    return f"compile probe per instruction set (TORCHINDUCTOR_VEC_ISA_OK={value})"


def prepare_process(threads: int | None, tf32: bool = False, cudnn_benchmark: bool = False) -> int:
    """Threads, CUDA arithmetic, glibc's allocator and Inductor's instruction-set check as every timing
    command sets them; returns the threads."""
    count = configure_threads(threads)
    trust_cpu_flags_for_inductor()
    key_compile_caches_by_library_isa()
    configure_cuda(tf32, cudnn_benchmark)
    allocator.pin_for_timing()
    return count
