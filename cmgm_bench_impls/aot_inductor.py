"""``aot-inductor``: PyTorch's own deployment path, ``torch.export`` + AOTInductor.

The reference (with the outputs of the case's mode) is exported with static
shapes, compiled ahead of time into a ``.pt2`` package and loaded with
``torch._inductor.aoti_load_package``, the way a C++ or Python server would
load it. The package is compiled code for one machine, so it is cached
(``export_cache``) under a key that adds the CPU (model, flags, Inductor's
vector ISA) or the GPU, and the C++ compiler, to the weights and shape.
Compiling takes tens of seconds per shape on a small CPU, so the
implementation runs only when named (``--impl aot-inductor``); the time is
in ``compile_s`` on a cache miss.
"""

from __future__ import annotations

import torch

from cmgm_bench.machine import cpu_features
from cmgm_bench.registry import Built, register
from cmgm_bench_impls.builders import export_cache, kernels


def compiler_problem() -> str | None:
    return kernels.compiler_problem("AOTInductor packages")


def machine_key(case) -> dict:
    if case.device == "cpu":
        from torch._inductor import cpu_vec_isa

        caps = cpu_features.library_isa_caps()  # a package compiled under other caps is another package
        return {"cpu": cpu_features.fingerprint(), "vec_isa": str(cpu_vec_isa.pick_vec_isa()), **({"isa_caps": caps} if caps else {})}
    return {  # a package compiled with TF32 allowed keeps TF32 kernels: the flag is part of what it computes
        "gpu": torch.cuda.get_device_name(case.device), "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def compile_package(module, case, path) -> None:
    with torch.no_grad(), export_cache.quiet_tools():
        graph = export_cache.inference_graph(module, case.mode)
        exported = torch.export.export(graph, export_cache.example_inputs(case, case.device))
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path))


@register(
    "aot-inductor",
    description="torch.export + AOTInductor package (static shapes), loaded with aoti_load_package",
    devices=("cpu", "cuda"),
    modes=("fwd", "feature"),
    requires=compiler_problem,
    in_default_sweep=False,
)
def build(module, case):
    key_parts = {
        "torch": torch.__version__,
        "compiler": kernels.compiler_tag(kernels.compiler()),
        "mode_outputs": "out" if case.mode == "feature" else "out,attn_map",
        "input_shape": (case.batch, case.dim, case.height, case.width),
        "heads": case.heads,
        "module": export_cache.module_digest(module),
        **machine_key(case),
    }
    path, notes = export_cache.cached_file("aoti", key_parts, ".pt2", lambda target: compile_package(module, case, target))
    with export_cache.quiet_tools():
        runner = torch._inductor.aoti_load_package(str(path))
    want_map = case.mode != "feature"

    def forward(x, y):
        result = runner(x, y)
        return (result[0], result[1]) if want_map else (result, None)

    notes.update(runtime=f"AOTInductor (torch {torch.__version__})", threads=torch.get_num_threads())
    return Built(fn=forward, notes=notes)
