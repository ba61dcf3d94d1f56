"""One set-up for every process that times a case: threads, CUDA arithmetic, the allocator.

``run``, ``ab``, ``profile`` and each ``--isolate`` child call
:func:`prepare_process`, so they all time the same arithmetic: TF32 and
cuDNN autotuning are recorded settings (off unless asked for), never the
process's defaults (cuDNN allows TF32 convolutions by default). TF32 is set
through the API the installed torch has: ``fp32_precision`` from torch 2.9
on (mixing it with the legacy ``allow_tf32`` flags raises there), the legacy
flags before.
"""

from __future__ import annotations

import torch

from cmgm_bench import memory
from cmgm_bench.errors import UsageError


def check_threads(threads: int | None) -> None:
    if threads is not None and threads <= 0:
        raise UsageError(f"--threads: {threads} must be positive")


def configure_threads(threads: int | None) -> int:
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def has_precision_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision")


def configure_cuda(tf32: bool, cudnn_benchmark: bool) -> None:
    """TF32 for float32 matmuls and convolutions, and cuDNN autotuning, exactly as asked."""
    if has_precision_api():
        precision = "tf32" if tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def cuda_arithmetic() -> dict:
    """What the process's float32 matmuls and convolutions really use, read through the same API."""
    if has_precision_api():
        return {
            "tf32_matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
            "tf32_cudnn": torch.backends.cudnn.conv.fp32_precision == "tf32",
            "tf32_api": "fp32_precision",
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "tf32_api": "allow_tf32",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def prepare_process(threads: int | None, tf32: bool = False, cudnn_benchmark: bool = False) -> int:
    """Threads, CUDA arithmetic and glibc's allocator as every timing command sets them; returns the threads."""
    count = configure_threads(threads)
    configure_cuda(tf32, cudnn_benchmark)
    memory.pin_allocator_for_timing()
    return count
