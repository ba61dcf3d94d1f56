"""``cudagraph``: the reference module captured once in a CUDA graph and replayed.

Capture happens on the first call (so it is part of ``compile_s``) with the
harness's input tensors as the graph's static inputs; later calls with the
same tensors only replay, other tensors are copied in first. A capture that
fails makes the case ``unsupported`` with the reason, or ``oom`` when it ran
out of memory. A replay allocates nothing: its memory is the graph's private
pool, reserved at capture, counted once in the case's ``resident_mb`` and
recorded as ``notes.held_bytes``.
"""

from __future__ import annotations

import torch

from cmgm_bench.measure.failures import is_out_of_memory
from cmgm_bench.registry import Built, Unsupported, register


def capture(forward, x: torch.Tensor, y: torch.Tensor):
    """Warm up on a side stream, then capture ``forward(x, y)``; returns the graph, its outputs and
    the bytes its private pool reserved (the outputs and intermediates of every replay).

    The warm-up's cached blocks are returned before the capture, so the graph's
    private pool does not compete with them; running out of memory is ``oom``,
    any other failure to capture is ``unsupported`` with the reason.
    """
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward(x, y)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = forward(x, y)
    except (RuntimeError, AssertionError, AttributeError) as exc:
        raise capture_failure(exc) from exc
    return graph, outputs, torch.cuda.memory_reserved() - reserved


def capture_failure(exc: BaseException) -> BaseException:
    """What a failed capture means: out of memory stays an out-of-memory error (an ``oom`` row); the rest is ``Unsupported``."""
    if is_out_of_memory(exc):  # also one raised while the capture ended, behind the error that ending raised
        return exc
    return Unsupported(f"CUDA graph capture failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


@register(
    "cudagraph",
    description="reference module captured once in a CUDA graph (first call), then replayed",
    devices=("cuda",),
    modes=("fwd", "feature"),
)
def build(module, case):
    want_map = case.mode != "feature"
    state = {}

    def forward(x, y):
        return module(x, y, attn_map=want_map)

    def replay(x, y):
        if not state:
            state["x"], state["y"] = x, y
            state["graph"], state["outputs"], state["pool_bytes"] = capture(forward, x, y)
        if x is not state["x"]:
            state["x"].copy_(x)
        if y is not state["y"]:
            state["y"].copy_(y)
        state["graph"].replay()
        return state["outputs"]

    return Built(fn=replay, held_bytes=lambda: state.get("pool_bytes"))
