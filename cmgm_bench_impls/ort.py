"""``onnxruntime`` (and ``onnxruntime-trt``): the reference exported to ONNX, run by ONNX Runtime.

The graph is exported once per weights and shape (``export_cache``) with
static shapes; the ``InferenceSession`` has every graph optimisation on,
``intra_op_num_threads`` equal to the run's thread count and one inter-op
thread, sequential execution. Session creation and the first call count as
``compile_s``.

* CPU: the CPU execution provider; inputs are handed over as NumPy views of
  the torch tensors (no copy) and the outputs come back as tensors over
  ONNX Runtime's result arrays.
* CUDA: the CUDA execution provider on torch's current stream, with I/O
  binding to the torch tensors' device memory, so no host copy is timed; under
  the run's TF32 and cuDNN settings (``use_tf32``, ``cudnn_conv_algo_search``),
  as ONNX Runtime reports them back in the case's ``variant``.
  ``onnxruntime-trt`` is the same with the TensorRT provider first; it is
  registered only where this ONNX Runtime build has that provider.

ONNX Runtime keeps a memory arena between calls (its deployment default; the
memory pattern, which planned a second copy of each call's buffers, is off), so
``peak_mem_mb`` shows what one call allocates beyond the arena it already holds;
the arena itself is in ``resident_mb`` (on CUDA read from the device's used memory).
"""

from __future__ import annotations

import numpy as np
import torch

from cmgm_bench.registry import Built, Unsupported, register
from cmgm_bench_impls.builders import export_cache

PACKAGES = ("onnxruntime", "onnx", "onnxscript")


def available_providers() -> list[str]:
    if export_cache.missing_packages("onnxruntime"):
        return []
    import onnxruntime

    return onnxruntime.get_available_providers()


def provider_problem(case, provider: str) -> str | None:
    if case.device == "cuda" and provider not in available_providers():
        return f"this ONNX Runtime has no {provider} (pip install onnxruntime-gpu)"
    return None


def session_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # The memory pattern plans each call's buffers as one block carved from the arena, beside the arena's own
    # growth: with it the same graph held 3.4x the memory for no speed (docs/performance.md#memory).
    options.enable_mem_pattern = False
    return options


def cuda_provider_options(index: int, stream: int, tf32: bool, cudnn_benchmark: bool) -> dict:
    """The CUDA provider's options under the run's arithmetic (``--tf32``, ``--cudnn-benchmark``): ONNX Runtime's own
    defaults (TF32 on, an exhaustive cuDNN search) would otherwise apply while the run records them off. cuDNN's
    heuristic choice is what PyTorch makes without ``cudnn.benchmark``, the exhaustive search what it makes with it."""
    return {
        "device_id": index, "user_compute_stream": str(stream), "use_tf32": str(int(tf32)),
        "cudnn_conv_algo_search": "EXHAUSTIVE" if cudnn_benchmark else "HEURISTIC",
    }


def providers_for(case, accelerator: str | None) -> list:
    if case.device == "cpu":
        return ["CPUExecutionProvider"]
    index = torch.device(case.device).index or torch.cuda.current_device()
    options = cuda_provider_options(index, torch.cuda.current_stream(index).cuda_stream,
                                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    return ([(accelerator, {"device_id": index})] if accelerator else []) + [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def variant_of(provider: str, provider_options: dict) -> str:
    """The provider and, on CUDA, the arithmetic ONNX Runtime says it applies (as it reports its options back)."""
    cuda = provider_options.get("CUDAExecutionProvider")
    if provider == "CPUExecutionProvider" or not cuda:
        return provider
    return f"{provider} tf32={cuda.get('use_tf32', '?')} cudnn_conv_algo_search={cuda.get('cudnn_conv_algo_search', '?')}"


def cpu_runner(session, want_map: bool):
    def forward(x, y):
        outputs = session.run(None, {"x": x.numpy(), "y": y.numpy()})
        out = torch.from_numpy(outputs[0])
        return (out, torch.from_numpy(outputs[1])) if want_map else (out, None)

    return forward


def cuda_runner(session, case, want_map: bool):
    """Inputs and outputs bound to torch's device memory; outputs are reused from call to call."""
    device = torch.device(case.device)
    index = device.index or torch.cuda.current_device()
    out = torch.empty(case.batch, case.dim, case.height, case.width, device=device)
    outputs = {"out": out}
    if want_map:
        outputs["attn_map"] = torch.empty(case.batch, case.heads, case.tokens, case.tokens, device=device)
    binding = session.io_binding()
    for name, tensor in outputs.items():
        binding.bind_output(name, "cuda", index, np.float32, list(tensor.shape), tensor.data_ptr())
    bound: dict[str, torch.Tensor] = {}  # what each input is bound to, kept alive while bound

    def forward(x, y):
        for name, tensor in (("x", x), ("y", y)):
            if name not in bound or bound[name].data_ptr() != tensor.data_ptr():
                bound[name] = tensor.contiguous()
                binding.bind_input(name, "cuda", index, np.float32, list(tensor.shape), bound[name].data_ptr())
        session.run_with_iobinding(binding)
        return out, outputs.get("attn_map")

    return forward


def build_session(module, case, accelerator: str | None = None):
    import onnxruntime

    path, notes = export_cache.onnx_file(module, case)
    threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), session_options(threads), providers=providers_for(case, accelerator))
    ran_on = session.get_providers()[0]
    wanted = accelerator or ("CPUExecutionProvider" if case.device == "cpu" else "CUDAExecutionProvider")
    if ran_on != wanted:
        raise Unsupported(f"ONNX Runtime fell back to {ran_on} instead of {wanted}")
    options = session.get_session_options()
    notes.update(
        runtime=f"onnxruntime {onnxruntime.__version__}",
        provider=ran_on,
        intra_op_threads=options.intra_op_num_threads,
        inter_op_threads=options.inter_op_num_threads,
        graph_optimization="ORT_ENABLE_ALL",
        memory_arena=options.enable_cpu_mem_arena,
        memory_pattern=options.enable_mem_pattern,
    )
    return session, notes


def _register(name: str, accelerator: str | None, devices: tuple[str, ...], description: str):
    def check(case):
        return provider_problem(case, accelerator or "CUDAExecutionProvider")

    @register(
        name,
        description=description,
        devices=devices,
        modes=("fwd", "feature"),
        requires=lambda: export_cache.missing_packages(*PACKAGES),
        check=check,
    )
    def build(module, case):
        session, notes = build_session(module, case, accelerator)
        want_map = case.mode != "feature"
        runner = cpu_runner(session, want_map) if case.device == "cpu" else cuda_runner(session, case, want_map)
        return Built(fn=runner, notes=notes, variant=variant_of(notes["provider"], session.get_provider_options()))

    return build


build = _register(
    "onnxruntime",
    None,
    ("cpu", "cuda"),
    "ONNX export (dynamo exporter, static shapes) run by ONNX Runtime: CPU provider, or CUDA provider with I/O binding",
)
if "TensorrtExecutionProvider" in available_providers():
    build_trt = _register(
        "onnxruntime-trt", "TensorrtExecutionProvider", ("cuda",), "the ONNX export run by ONNX Runtime's TensorRT provider"
    )
