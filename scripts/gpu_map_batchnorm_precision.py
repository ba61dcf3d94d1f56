"""Where the float32 error of the attention map in train mode comes from: its convolution or its BatchNorm.

In train mode the map ``ReLU(BN(Conv3x3(attn + attnᵀ)))`` is normalised by the batch's own mean and
variance. At PGNet's grids the convolution's output varies little around its mean (the map's
BatchNorm section of docs/measuring.md), so whatever computes that variance in float32 loses
digits, and the map inherits the loss. This study starts from the float64 input of the map
(``attn + attnᵀ`` of the tool's reference workload for the shape) and computes the map with each
stage in float32 or float64, against the map computed wholly in float64:

- ``float64 values rounded to float32, float64 norm``: the floor of any float32 implementation,
  the rounding of the pre-norm values alone (about float32's epsilon times the ratio of their
  mean to their spread);
- ``float32 convolution, float64 norm``: the convolution's share;
- ``float64 convolution, float32 norm``: the BatchNorm's share, as the library runs it by default
  (cuDNN on CUDA);
- the same with cuDNN disabled (ATen's own kernel; on the CPU the same as the row above);
- ``all float32``: what the eager implementation computes from a float64 ``attn``.

The error is the tool's: relative L2 over the whole map (:func:`cmgm_bench.measure.accuracy.relative_error`).
Writes a JSON file and prints a table; the GPU check runs it.

    python scripts/gpu_map_batchnorm_precision.py OUT.json [--device cuda] [--batch 8 --res 48 --heads 8 --dim 64]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cmgm_bench.measure.accuracy import banded_if_same, relative_error
from cmgm_bench.workload.reference import make_inputs, reference_module


def map_input(batch: int, res: int, heads: int, dim: int, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The reference module (float64, train mode, on ``device``) and its map input ``attn + attnᵀ`` in float64."""
    module = copy.deepcopy(reference_module(dim, heads, 0, res, res)).double().to(device).train()
    x, y = make_inputs(batch, dim, res, res, 0)
    with torch.no_grad():
        attn = module.fuse(x.double().to(device), y.double().to(device))[1]
        return module, attn + attn.transpose(-1, -2)


def normed_map(pre_norm: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    """ReLU of the batch-statistics BatchNorm, in ``pre_norm``'s dtype."""
    weight, bias = bn.weight.to(pre_norm.dtype), bn.bias.to(pre_norm.dtype)
    return F.relu(F.batch_norm(pre_norm, None, None, weight, bias, training=True, eps=bn.eps))


def study(batch: int, res: int, heads: int, dim: int, device: str) -> dict:
    module, attn_sym = map_input(batch, res, heads, dim, device)
    conv32 = copy.deepcopy(module.conv).float()
    with torch.no_grad():
        pre64 = banded_if_same(module.conv)(attn_sym)  # as the float64 reference computes it: no im2col of the whole map
        truth = normed_map(pre64, module.bn)
        pre32 = conv32(attn_sym.float())
        mean, std = pre64.mean(dim=(0, 2, 3)), pre64.std(dim=(0, 2, 3))
        rows = [
            ("float64 values rounded to float32, float64 norm", normed_map(pre64.float().double(), module.bn)),
            ("float32 convolution, float64 norm", normed_map(pre32.double(), module.bn)),
            ("float64 convolution, float32 norm", normed_map(pre64.float(), module.bn)),
        ]
        with torch.backends.cudnn.flags(enabled=False):
            rows.append(("float64 convolution, float32 norm, cuDNN off", normed_map(pre64.float(), module.bn)))
        rows.append(("all float32", normed_map(pre32, module.bn)))
        return {
            "device": device,
            "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if device.startswith("cuda") else None,
            "shape": {"batch": batch, "res": res, "heads": heads, "dim": dim},
            "pre_norm_mean_over_std": [round(float(m / s), 1) for m, s in zip(mean.abs(), std)],
            "rows": [{"variant": name, "map_rel_err": relative_error(value, truth.cpu())} for name, value in rows],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--res", type=int, default=48)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    result = study(args.batch, args.res, args.heads, args.dim, args.device)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"map of B{args.batch} {args.res}x{args.res} h{args.heads} on {result['gpu'] or args.device}; "
          f"pre-norm |mean|/std per head: {result['pre_norm_mean_over_std']}")
    for row in result["rows"]:
        print(f"  {row['variant']:<50} {row['map_rel_err']:.2e}")


if __name__ == "__main__":
    main()
