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
"""

from __future__ import annotations

import torch

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


def prepare_process(threads: int | None, tf32: bool = False, cudnn_benchmark: bool = False) -> int:
    """Threads, CUDA arithmetic and glibc's allocator as every timing command sets them; returns the threads."""
    count = configure_threads(threads)
    configure_cuda(tf32, cudnn_benchmark)
    allocator.pin_for_timing()
    return count
