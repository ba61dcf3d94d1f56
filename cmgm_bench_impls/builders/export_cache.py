"""Exported graphs of the reference module, kept on disk so that a sweep exports each one once.

The deployment runtimes (``onnxruntime``, ``openvino``, ``aot-inductor``)
run a graph exported from the reference module with the case's static input
shape. Each exported file lives in a cache directory under a key made of
everything the file depends on: the weights (a digest of every parameter and
buffer), the module's code, the input shape, the outputs (``feature`` mode
exports the feature map only), the exporter and its versions, and, for
compiled code, the machine it was compiled for. A changed weight or a new
torch version therefore never loads a stale export. Files are written to a
temporary name and renamed into place, so an interrupted export leaves
nothing behind and two processes exporting the same key both end with a
whole file.

The cache directory is :func:`cmgm_bench.cache.cache_dir` (``$CMGM_BENCH_CACHE`` or ``~/.cache/cmgm-bench``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import inspect
import io
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from cmgm_bench.cache import cache_dir

ONNX_OPSET = 18
RUNTIMES_HINT = "pip install -e '.[runtimes]'"


def missing_packages(*modules: str) -> str | None:
    """``None`` if every module imports here, else which are missing and how to install them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return f"needs {', '.join(missing)}: {RUNTIMES_HINT}" if missing else None


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


class InferenceGraph(torch.nn.Module):
    """The reference module with the outputs of one mode: ``(out, attn_map)`` for fwd, ``out`` for feature."""

    def __init__(self, module: torch.nn.Module, want_map: bool):
        super().__init__()
        self.module = module
        self.want_map = want_map

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        out, attn_map = self.module(x, y, attn_map=self.want_map)
        return (out, attn_map) if self.want_map else out


def inference_graph(module: torch.nn.Module, mode: str) -> InferenceGraph:
    """The wrapper in ``eval()``; ``eval()`` recurses, so pass a module that may be put in eval mode."""
    return InferenceGraph(module, want_map=mode != "feature").eval()


def module_digest(module: torch.nn.Module) -> str:
    """A digest of the module's code and of every parameter and buffer (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(inspect.getsource(type(module)).encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def example_inputs(case, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the case's shape for tracing; their values do not enter the exported graph."""
    shape = (case.batch, case.dim, case.height, case.width)
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(shape, generator=generator).to(device) for _ in range(2))


def cached_file(kind: str, key_parts: dict, suffix: str, produce: Callable[[Path], None]) -> tuple[Path, dict]:
    """The cached file for ``key_parts``, produced by ``produce(tmp_path)`` if absent.

    Returns the path and notes for the results: the cache key's parts, whether
    it was a hit, and the seconds spent producing it.
    """
    key = hashlib.sha256(repr(sorted(key_parts.items())).encode()).hexdigest()[:24]
    folder = cache_dir() / kind
    path = folder / f"{key}{suffix}"
    notes = {f"{kind}_key": key_parts, f"{kind}_cache": "hit"}
    if path.exists():
        return path, notes
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".partial-") as scratch:
        partial = Path(scratch) / f"{key}{suffix}"
        produce(partial)
        os.replace(partial, path)
    notes.update({f"{kind}_cache": "miss", f"{kind}_s": time.perf_counter() - started})
    return path, notes


@contextlib.contextmanager
def quiet_tools():
    """Exporters and compilers report each step on stdout and warn about their own internals; keep the run's output clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_file(module: torch.nn.Module, case) -> tuple[Path, dict]:
    """The case's graph as an ONNX file (static shapes), exported once per key with ``torch.onnx.export(dynamo=True)``."""
    exporter = f"torch.onnx.export(dynamo=True), opset {ONNX_OPSET}"
    key_parts = {
        "exporter": exporter,
        "torch": torch.__version__,
        "onnxscript": version("onnxscript"),
        "onnx": version("onnx"),
        "mode_outputs": "out" if case.mode == "feature" else "out,attn_map",
        "input_shape": (case.batch, case.dim, case.height, case.width),
        "heads": case.heads,
        "module": module_digest(module),
    }

    def export(path: Path) -> None:
        cpu_module = _cpu_copy(module)
        with quiet_tools():
            torch.onnx.export(
                inference_graph(cpu_module, case.mode),
                example_inputs(case, "cpu"),
                str(path),
                input_names=["x", "y"],
                output_names=["out"] if case.mode == "feature" else ["out", "attn_map"],
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )

    path, notes = cached_file("onnx", key_parts, ".onnx", export)
    return path, {"exporter": exporter, "shapes": "static", **notes}


def _cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy in the same train/eval state, so exporting never changes the module the harness holds."""
    return copy.deepcopy(module).to("cpu")
