"""``fused`` and ``fused-bf16``: an inference-only CMGM for the CPU with everything foldable folded.

Built from the reference module's weights at build time:

* the LayerNorm affine parameters are folded into the projections that follow
  them, and the attention scale into the query rows of ``qv``;
* each BatchNorm is folded into the convolution before it;
* in ``fwd`` mode the attention runs as one C++ kernel
  (``csrc/softmax_attention.cpp``): a few rows of ``softmax(q kᵀ)`` at a time
  in L1, multiplied by ``v`` there, the N x N matrix written once for the map;
  in ``feature`` mode no N x N matrix is written: the same kernel keeping it
  in L1 in one call on the kernels' pool (below), or ATen's SDPA (flash on the
  CPU) among torch operators, whichever the race on the case's shape finds
  faster (the torch operators only by a margin: they pay PyTorch's pool waking
  up after idle, which a back-to-back race does not see);
* the map branch ``ReLU(BN(conv3x3(A + Aᵀ)))`` runs as one C++ kernel
  (``csrc/fused_map.cpp``) that reads the attention matrix once, in mirrored
  pairs of cache-sized tiles, forms ``A + Aᵀ`` in the tile, and writes the map once.

A ``fwd`` call with the map on the kernel is one operator (``csrc/forward.cpp``)
whose every parallel region (the layer norms and projections by rows of
tokens, the attention, the feature convolutions by groups of output channels,
the map) runs on the kernels' own thread pool (``csrc/pool.h``), ATen's
operators single-threaded inside its chunks. There the map stage has a second
path, ``recompute``: the attention kernel stores no N x N matrix, only its
operands and each row's softmax maximum and sum, and the map kernel recomputes
the matrix tile by tile (equal bit for bit: the same operations in the same
order), trading a second computation of every score and exponential for the
matrix's trip to memory and back. The call's N x N matrices (the attention matrix, when stored, and the map)
are written through the cache (``cached``) or, on the x86 targets, with streaming
stores that skip it (``streaming``): no line is read before it is written, which
halves their traffic where memory bounds the call. The pool's caller claims work
like its workers, so no region waits for a worker that is asleep after idle
or descheduled by a busy neighbour; PyTorch's OpenMP regions would. The call's
scratch (the attention matrix: 170 MB at 48x48) is a workspace the
implementation keeps between calls, so its pages are faulted in once.

Per stage, the faster path wins: at build time each kernel is raced against
ATen's equivalent (softmax attention with ``matmul``; add, ``conv2d``, ReLU) on
the case's shape, once per process and shape (when the map is on the kernel,
the attention paths, the map read or recomputed and either kind of store race
as whole calls on the pool; ATen's attention must be faster by
``ATEN_ATTENTION_MARGIN``). Which of them wins depends on the shape and the CPU
(docs/performance.md, "Streaming stores" and "The map recomputed"). The choice and the times are in the case's notes and
``variant`` column, so a kernel that loses on some CPU never costs the folded
model its gain.

``fused-bf16`` keeps the projections and the feature convolutions in bfloat16
(AMX or AVX512-BF16) and stores the attention matrix in bfloat16; both kernels
compute and accumulate in float32. On a CPU without native bfloat16 its
matmuls would be emulated (about 5x slower than float32), so it is
``unsupported`` there with that reason.

The kernels are built for a named instruction-set target (``kernels.py``); a
C++ compiler is needed, and without one the ``fwd`` cases are ``unsupported``.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from cmgm_bench.machine import cpu_features
from cmgm_bench.registry import Built, Unsupported, register
from cmgm_bench_impls.builders import kernels

KERNEL_HEADS = (1, 2, 4, 8, 16)
STORES = ("cached", "streaming")  # how a call on the pool writes its N x N matrices: through the cache, or past it
# (attention, map) paths of a call on the pool: the map reads the stored matrix, or recomputes it from the attention kernel's rows
ON_POOL = (("kernel", "kernel"), ("aten", "kernel"), ("kernel", "recompute"))


def store_kinds(target: str) -> tuple[str, ...]:
    """The ``STORES`` the kernels built for ``target`` have: streaming stores only where the build has them."""
    return STORES if kernels.TARGETS[target].streaming_stores else STORES[:1]


def map_kernel_problem(case) -> str | None:
    """Why the kernels cannot run ``case`` (the map kernel is compiled for 1, 2, 4, 8 and 16 heads)."""
    if case.heads not in KERNEL_HEADS:
        return f"the fused map kernel is compiled for {', '.join(map(str, KERNEL_HEADS))} heads, not {case.heads}"
    return kernels.problem(kernels.best_target())


def bfloat16_problem(case) -> str | None:
    if not cpu_features.native_bfloat16():
        return ("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bfloat16 matmuls would be emulated, about 5x slower than "
                "float32; use fused")
    return None


def fold_batchnorm(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (inference statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = (conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean
    return weight, bias * scale + bn.bias


def fold_layernorm(norm: torch.nn.LayerNorm, linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``linear(norm(x))`` applied to the unscaled normalised ``x``."""
    weight = linear.weight * norm.weight.view(1, -1)
    bias = linear.weight @ norm.bias + (linear.bias if linear.bias is not None else 0)
    return weight, bias


def new_workspace() -> torch.Tensor:
    """An empty scratch buffer for ``FusedCMGM.on_pool``, which grows it in place: a normal tensor, so that calls in
    and out of inference mode may grow it."""
    with torch.inference_mode(False):
        return torch.empty(0, dtype=torch.uint8)


class FusedCMGM:
    """The folded parameters and the forward pass; derived from a reference module at build time."""

    def __init__(self, module, dtype: torch.dtype):
        with torch.no_grad():
            C, h = module.dim, module.num_heads
            qv_w, qv_b = fold_layernorm(module.lnx, module.qv)
            qv_w, qv_b = qv_w.clone(), qv_b.clone()
            qv_w[:C] *= module.scale
            qv_b[:C] *= module.scale
            k_w, k_b = fold_layernorm(module.lny, module.k)
            c1_w, c1_b = fold_batchnorm(module.conv2[0], module.conv2[1])
            c2_w, c2_b = fold_batchnorm(module.conv2[3], module.conv2[4])
            self.map_w, self.map_b = (t.float().contiguous() for t in fold_batchnorm(module.conv, module.bn))
            cast = lambda t: t.to(dtype).contiguous()
            self.qv_w, self.qv_b, self.k_w, self.k_b = cast(qv_w), cast(qv_b), cast(k_w), cast(k_b)
            self.proj_w, self.proj_b = cast(module.proj.weight), cast(module.proj.bias)
            self.c1_w = c1_w.to(dtype).contiguous(memory_format=torch.channels_last)
            self.c2_w = c2_w.to(dtype).contiguous(memory_format=torch.channels_last)
            self.c1_b, self.c2_b = cast(c1_b), cast(c2_b)
        self.dim, self.heads, self.dtype = C, h, dtype
        self.eps_x, self.eps_y = module.lnx.eps, module.lny.eps
        self.kernels = None  # the C++ extension, set by use_kernels(); fwd needs it
        self.workspace = new_workspace()  # on_pool's scratch, kept between calls
        self.stages = {"attention": "aten", "map": "aten", "stores": "cached", "feature": "operators"}

    def use_kernels(self, extension, stages: dict[str, str]) -> None:
        """Run fwd's attention stage on ``"kernel"`` (ours) or ``"aten"``, its map stage on ``"kernel"``, ``"aten"`` or
        ``"recompute"`` (the kernel's, on the pool, after the attention kernel), write a call's N x N matrices on the
        pool with ``stages["stores"]`` (one of ``STORES``; ``"cached"`` if not given), and run feature mode as one call
        on the ``"pool"`` or as torch ``"operators"`` (the default)."""
        self.kernels, self.stages = extension, {"stores": "cached", "feature": "operators", **stages}

    def attention(self, q, k, v, path: str):
        """(A V as (B, N, C) in the compute dtype, A as (B, h, N, N)); q is already scaled."""
        if path == "kernel":
            mixed, attn = self.kernels.softmax_attention(q, k, v, True, self.dtype)  # widened to float32 inside
            return mixed.to(self.dtype), attn
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1, dtype=torch.float32)
        B, h, N, d = q.shape
        return (attn.to(self.dtype) @ v).transpose(1, 2).reshape(B, N, h * d), attn

    def attention_map(self, attn, path: str):
        if path == "kernel":
            return self.kernels.fused_map(attn, self.map_w, self.map_b)
        attn = attn.float()
        return F.relu(F.conv2d(attn + attn.transpose(-1, -2), self.map_w, self.map_b, padding=1))

    def projections(self, x, y):
        """x's tokens, and q (scaled), k, v as (B, h, N, d) in the compute dtype."""
        B, C, H, W = x.shape
        h, N, d = self.heads, H * W, C // self.heads
        x_tokens = x.flatten(2).transpose(1, 2)
        xn = F.layer_norm(x_tokens, (C,), eps=self.eps_x).to(self.dtype)
        yn = F.layer_norm(y.flatten(2).transpose(1, 2), (C,), eps=self.eps_y).to(self.dtype)
        k = F.linear(yn, self.k_w, self.k_b).view(B, N, h, d).transpose(1, 2)
        q, v = F.linear(xn, self.qv_w, self.qv_b).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        return x_tokens, q, k, v

    def feature(self, mixed, x_tokens, height: int, width: int):
        """The fused feature (B, C, H, W) float32 from A V (B, N, C): the output projection, the residual, the two
        convolutions of the feature branch."""
        B, N, C = mixed.shape
        fused = F.linear(mixed, self.proj_w, self.proj_b) + x_tokens.to(self.dtype)
        # (B, N, C) tokens are an NHWC image: view them as channels-last (B, C, H, W).
        fused = fused.view(B, height, width, C).permute(0, 3, 1, 2)
        g = F.relu(F.conv2d(fused, self.c1_w, self.c1_b, padding=1))
        g = F.relu(F.conv2d(g, self.c2_w, self.c2_b, padding=1))
        return (g + fused).float()

    def on_pool(self, x: torch.Tensor, y: torch.Tensor, attention: str | None = None, stores: str | None = None,
                attention_map: str | None = None, want_map: bool = True):
        """fwd's whole call as one operator of the kernels (``csrc/forward.cpp``), every parallel region on their pool;
        the attention stage on ``attention``, the map on ``attention_map`` (``"kernel"`` or ``"recompute"``), the N x N
        matrices written with ``stores`` (defaults: the choices made for them). Without ``want_map``, feature mode's
        call, ``(out, None)``: the attention kernel writing no matrix, no map.

        The call's scratch (the attention matrix above all) lives in ``self.workspace``, kept between calls; a call
        made while another thread's call holds it gets a workspace of its own."""
        workspace, self.workspace = self.workspace, None
        if workspace is None:
            workspace = new_workspace()
        kernel_attention = not want_map or (attention or self.stages["attention"]) == "kernel"
        recompute = want_map and (attention_map or self.stages["map"]) == "recompute"
        streaming = want_map and (stores or self.stages["stores"]) == "streaming"
        try:
            return self.kernels.fused_forward(
                x, y, self.qv_w, self.qv_b, self.k_w, self.k_b, self.proj_w, self.proj_b,
                self.c1_w, self.c1_b, self.c2_w, self.c2_b, self.map_w, self.map_b, self.eps_x, self.eps_y, self.heads,
                kernel_attention, recompute, streaming, want_map, workspace,
            )
        finally:
            self.workspace = workspace

    def __call__(self, x: torch.Tensor, y: torch.Tensor, want_map: bool):
        if want_map and self.stages["map"] != "aten":
            return self.on_pool(x, y)
        if not want_map and self.stages["feature"] == "pool":
            return self.on_pool(x, y, want_map=False)
        return self.by_operators(x, y, want_map)

    def by_operators(self, x: torch.Tensor, y: torch.Tensor, want_map: bool):
        """The call as a sequence of torch operators (ATen's on PyTorch's OpenMP pool), each stage on its chosen path:
        feature mode, and fwd when the map stage is ATen's."""
        B, C, H, W = x.shape
        x_tokens, q, k, v = self.projections(x, y)
        if want_map:
            mixed, attn = self.attention(q, k, v, self.stages["attention"])
        else:  # no N x N matrix at all: ATen's flash kernel
            mixed = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(B, H * W, C)
        out = self.feature(mixed, x_tokens, H, W)
        if not want_map:
            return out, None
        return out, self.attention_map(attn, self.stages["map"])


# How much faster, back to back, a path of more ATen operators (ATen's attention in fwd; the torch operators in
# feature mode) must be to be chosen over the kernels': more operators cost more after idle, which the race does not see.
ATEN_ATTENTION_MARGIN = 0.05

# (target, dtype, batch, heads, tokens, head dim, threads) -> (stages, milliseconds per path)
_STAGE_CHOICES: dict[tuple, tuple[dict, dict]] = {}


def race(candidates: dict, rounds: int = 21, budget_s: float = 0.25) -> dict[str, float]:
    """Median milliseconds of each zero-argument call, timed in interleaved rounds (this host drifts), the order
    of the candidates alternating from round to round, after one untimed call of each (a first call builds
    oneDNN's primitives and touches fresh pages)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for call in candidates.values():
        call()
    started = time.perf_counter()
    for round_index in range(rounds):
        order = list(candidates.items())
        for name, call in order if round_index % 2 == 0 else reversed(order):
            begin = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - begin)
        if round_index >= 2 and time.perf_counter() - started > budget_s:
            break
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def choose_stages(fused: FusedCMGM, x, y, key: tuple, stores: tuple[str, ...]) -> tuple[dict, dict]:
    """Per stage, its path, and the ``stores`` for the call's N x N matrices, by races on this shape (once per
    process and key).

    The map stage races alone, the kernel against ATen. With the map on the kernel, the call runs on the kernels'
    pool, so every (attention, map) pair of ``ON_POOL`` races there as whole calls, each with every kind of
    ``stores``; with the map on ATen, the attention paths race alone (and the stores are ``"cached"``). ATen's
    attention is chosen only when its best call is faster by more than ``ATEN_ATTENTION_MARGIN``: the kernel runs
    fewer operators, which costs less in a call after idle (which a back-to-back race does not see), and a near tie
    would otherwise pick either path from run to run. The chosen attention path's fastest call sets the map's path
    and the stores.
    """
    if key not in _STAGE_CHOICES:
        with torch.inference_mode():
            _, q, k, v = fused.projections(x, y)
            attn = fused.attention(q, k, v, "kernel")[1]
            attention_map = race({path: lambda p=path: fused.attention_map(attn, p) for path in ("kernel", "aten")})
            map_path = min(attention_map, key=attention_map.get)
            timings = {"map": attention_map}
            if map_path == "kernel":
                calls = race({(path, on_map, kind): lambda p=path, m=on_map, s=kind: fused.on_pool(x, y, p, s, m)
                              for path, on_map in ON_POOL for kind in stores})
                attention = {path: min(ms for (a, _, _), ms in calls.items() if a == path) for path in ("kernel", "aten")}
            else:
                attention = race({path: lambda p=path: fused.attention(q, k, v, p) for path in ("kernel", "aten")})
            timings["attention"] = attention
        attention_path = "aten" if attention["aten"] < attention["kernel"] * (1 - ATEN_ATTENTION_MARGIN) else "kernel"
        stages = {"attention": attention_path, "map": map_path, "stores": "cached"}
        if map_path == "kernel":
            chosen = {(on_map, kind): ms for (path, on_map, kind), ms in calls.items() if path == attention_path}
            stages["map"], stages["stores"] = min(chosen, key=chosen.get)
            timings["calls"] = {f"map={on_map}, stores={kind}": ms for (on_map, kind), ms in chosen.items()}
        _STAGE_CHOICES[key] = (stages, timings)
    return _STAGE_CHOICES[key]


def choose_feature_path(fused: FusedCMGM, x, y, key: tuple) -> tuple[str, dict]:
    """Feature mode's path, ``"pool"`` (one call of the kernels, the attention kernel writing no matrix) or
    ``"operators"`` (torch operators with SDPA), by a race of whole calls on this shape (once per process and key),
    and the times. The torch operators are chosen only when faster by ``ATEN_ATTENTION_MARGIN``: they run on
    PyTorch's pool, whose waking up after idle costs milliseconds that a back-to-back race does not see. (ATen's
    SDPA inside the pool's chunks measured 1.8-7x slower than the kernel there, so it is not a candidate.)"""
    if key not in _STAGE_CHOICES:
        with torch.inference_mode():
            timings = race({"pool": lambda: fused.on_pool(x, y, want_map=False), "operators": lambda: fused.by_operators(x, y, False)})
        path = "operators" if timings["operators"] < timings["pool"] * (1 - ATEN_ATTENTION_MARGIN) else "pool"
        _STAGE_CHOICES[key] = (path, timings)
    return _STAGE_CHOICES[key]


def load_kernels() -> tuple[object, dict]:
    """The kernels for this CPU's target and notes on the build; a failing build is ``unsupported`` with the reason."""
    target = kernels.best_target()
    try:
        extension, seconds = kernels.load(target)
    except Exception as exc:  # any build failure means: not here, and why
        raise Unsupported(f"the fused kernels failed to build for {target}: {str(exc).strip().splitlines()[-1][:200]}") from None
    return extension, {"kernel_target": target, "kernel_extension": kernels.extension_name(target), "kernel_build_s": seconds}


def _register(name: str, dtype: torch.dtype, label: str, description: str, check=None):
    def problem(case):
        return (check and check(case)) or (map_kernel_problem(case) if case.mode == "fwd" else None)

    @register(name, description=description, devices=("cpu",), modes=("fwd", "feature"), dtype=label, check=problem)
    def build(module, case):
        fused = FusedCMGM(module, dtype)
        want_map = case.mode != "feature"
        try:
            extension, notes = load_kernels()
        except Unsupported as why:
            if want_map:
                raise
            # feature mode runs without our kernels, as torch operators
            return Built(fn=lambda x, y: fused(x, y, False), notes={"kernels_unavailable": str(why)}, variant="sdpa")
        fused.use_kernels(extension, {"attention": "kernel", "map": "kernel"})
        x, y = (torch.randn(case.batch, case.dim, case.height, case.width, generator=torch.Generator().manual_seed(2)) for _ in range(2))
        key = (notes["kernel_target"], label, case.batch, case.heads, case.tokens, case.dim // case.heads, torch.get_num_threads())
        if not want_map:
            path, timings = choose_feature_path(fused, x, y, (*key, "feature"))
            fused.use_kernels(extension, {"attention": "kernel", "map": "kernel", "feature": path})
            fused.workspace = new_workspace()
            notes.update(stage_paths={"feature": path}, stage_ms={"feature": timings})
            variant = f"{notes['kernel_target']}: attention=kernel, on the pool" if path == "pool" else "sdpa"
            return Built(fn=lambda x, y: fused(x, y, False), notes=notes, variant=variant)
        stages, timings = choose_stages(fused, x, y, key, store_kinds(notes["kernel_target"]))
        fused.use_kernels(extension, stages)
        fused.workspace = new_workspace()  # sized by the chosen path's first call, not by the largest path the race ran
        notes.update(stage_paths=stages, stage_ms=timings)
        variant = f"{notes['kernel_target']}: attention={stages['attention']}, map={stages['map']}, stores={stages['stores']}"
        return Built(fn=lambda x, y: fused(x, y, True), notes=notes, variant=variant)

    return build


build_fp32 = _register("fused", torch.float32, "float32", "folded LN/BN/scale, C++ row-blocked attention and one-pass map kernels; float32")
build_bf16 = _register(
    "fused-bf16", torch.bfloat16, "bfloat16",
    "as fused, with projections, convs and the stored attention matrix in bfloat16; kernels accumulate in float32",
    check=bfloat16_problem,
)
