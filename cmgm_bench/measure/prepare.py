"""Build an implementation for one case: the reference's weights on the device, the inputs, the step to time."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.workload.modes import make_step, set_module_mode
from cmgm_bench.workload.reference import make_inputs, reference_module


@dataclass
class PreparedCase:
    """An implementation built for one case, with its inputs and the step to time."""

    module: torch.nn.Module
    fn: object
    x: torch.Tensor
    y: torch.Tensor
    step: object
    notes: dict
    variant: str | None = None
    held_bytes: object = None  # Built.held_bytes


def prepare_case(case: Case, impl, seed: int) -> PreparedCase:
    """Copy the reference to the device in the mode's state, build the implementation, make inputs."""
    module = set_module_mode(copy.deepcopy(reference_module(case.dim, case.heads, seed, case.height,
                                                            case.width)).to(case.device), case.mode)
    x, y = (t.to(case.device) for t in make_inputs(case.batch, case.dim, case.height, case.width, seed))
    built = impl.build(module, case)
    built = built if isinstance(built, registry.Built) else registry.Built(fn=built)
    if built.prepare_inputs is not None:
        x, y = built.prepare_inputs(x, y)
    x, y = x.detach(), y.detach()
    module = built.module if built.module is not None else module
    step = make_step(built.fn, case.mode, module, x, y)
    return PreparedCase(module, built.fn, x, y, step, dict(built.notes), built.variant, built.held_bytes)


def memory_format_of(tensor: torch.Tensor) -> str:
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous" if tensor.is_contiguous() else "strided"
