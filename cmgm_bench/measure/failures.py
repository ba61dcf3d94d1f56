"""How a failure of a case is told: one line of text, whether it was the memory running out, and whether
the CUDA context survived it."""

from __future__ import annotations

from typing import Iterator

import torch

# What the libraries say when an allocation fails: PyTorch's CPU allocator, CUDA itself, cuBLAS, cuDNN,
# ONNX Runtime's BFC arena ("Failed to allocate memory for requested buffer ..."), C++'s operator new.
_OUT_OF_MEMORY_WORDS = (
    "out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
    "Failed to allocate memory", "std::bad_alloc",
)


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during: a failure raised while leaving a CUDA graph capture
    (``torch.cuda.graph.__exit__``) or re-raised by a plug-in carries the allocation failure behind it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or a failure behind it, is an allocation failure of any library the case uses; cuDNN's
    ``NOT_SUPPORTED`` counts where it names the workspace it could not get."""
    for failure in causes(exc):
        if isinstance(failure, (MemoryError, torch.OutOfMemoryError)):
            return True
        text = str(failure)
        if any(words in text for words in _OUT_OF_MEMORY_WORDS):
            return True
        if "CUDNN_STATUS_NOT_SUPPORTED" in text and "workspace" in text.lower():
            return True
    return False


def device_usable(device: str) -> bool:
    """Whether ``device`` still runs work in this process: on CUDA, after an illegal address, a device-side assert
    or a launch failure every later call in the process fails (the error is sticky) and only a new process helps;
    the CPU always does."""
    if not device.startswith("cuda"):
        return True
    try:
        torch.cuda.synchronize(device)
        probe = torch.arange(8.0, device=device)
        return float((probe + 1).sum().item()) == 36.0
    except Exception:
        return False
