"""``openvino`` and ``openvino-bf16``: the reference's ONNX export compiled by OpenVINO for the CPU.

The same cached ONNX file as ``onnxruntime`` (``export_cache``) is read and
compiled for the ``CPU`` device with the latency performance hint, one
stream, ``INFERENCE_NUM_THREADS`` equal to the run's thread count and an
inference-precision hint: ``f32`` for ``openvino``, ``bf16`` for
``openvino-bf16``. The bf16 variant runs only where OpenVINO's CPU plugin
reports native bfloat16 (AVX512-BF16 or AMX); elsewhere OpenVINO would
quietly run float32 under that name, so the case is ``unsupported``.

Calls go through one infer request with shared inputs and outputs (no
copies): the returned tensors are views of the request's output buffers,
valid until the next call, as in a deployment that reuses its request.
"""

from __future__ import annotations

import functools

import torch

from cmgm_bench.machine import cpu_features

from cmgm_bench.registry import Built, Unsupported, register
from cmgm_bench_impls.builders import export_cache

PACKAGES = ("openvino", "onnx", "onnxscript")


@functools.lru_cache(maxsize=1)
def core():
    import openvino

    return openvino.Core()


def bf16_problem(case) -> str | None:
    if "BF16" not in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "OpenVINO's CPU plugin reports no native bfloat16 on this CPU (needs AVX512-BF16 or AMX)"
    capped = cpu_features.library_isa_cap()
    if capped:  # the plugin reports the CPU's capabilities, its oneDNN obeys the cap and then cannot compile bf16
        return f"no native bfloat16 for OpenVINO's oneDNN: {capped} keeps it below AVX-512"
    return None


def compile_for_cpu(module, case, precision: str):
    path, notes = export_cache.onnx_file(module, case)
    threads = torch.get_num_threads()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
    }
    compiled = core().compile_model(core().read_model(str(path)), "CPU", config)
    ran_with = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if ran_with != precision:
        raise Unsupported(f"OpenVINO compiled with inference precision {ran_with}, not {precision}")
    import openvino

    notes.update(
        runtime=f"openvino {openvino.__version__}",
        inference_precision=ran_with,
        inference_threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
        performance_hint=str(compiled.get_property("PERFORMANCE_HINT")),
    )
    return compiled, notes


def _register(name: str, precision: str, dtype: str, check, description: str):
    @register(
        name,
        description=description,
        devices=("cpu",),
        modes=("fwd", "feature"),
        dtype=dtype,
        requires=lambda: export_cache.missing_packages(*PACKAGES),
        check=check,
    )
    def build(module, case):
        compiled, notes = compile_for_cpu(module, case, precision)
        request = compiled.create_infer_request()
        want_map = case.mode != "feature"

        def forward(x, y):
            results = request.infer({"x": x.numpy(), "y": y.numpy()}, share_inputs=True, share_outputs=True)
            out = torch.from_numpy(results["out"])
            return (out, torch.from_numpy(results["attn_map"])) if want_map else (out, None)

        return Built(fn=forward, notes=notes, variant=f"CPU {notes['inference_precision']}")

    return build


build_f32 = _register(
    "openvino", "f32", "float32", None,
    "ONNX export compiled by OpenVINO for the CPU: f32 precision hint, latency hint, one stream",
)
build_bf16 = _register(
    "openvino-bf16", "bf16", "bfloat16", bf16_problem,
    "as openvino with the bf16 precision hint; only where the CPU has native bfloat16",
)
