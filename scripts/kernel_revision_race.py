"""The fused kernels' operators of this checkout against those of another revision, interleaved in one process.

Builds the other revision's ``cmgm_bench_impls/builders/csrc`` sources (taken with ``git show``) under an
operator namespace of its own, checks both give bit-identical results, and times them
in alternating blocks: the median over rounds of the per-call time ratio (this / other).
With ``--calls``, races ``fused``'s whole fwd call on the kernels' pool instead (``FusedCMGM.on_pool`` with the
given map path and stores, on either revision's operators; the other revision's ``fused_forward`` must take this
checkout's arguments), each checked against float64 at the float32 tolerance: a change that reorders a sum
changes the last bits.

    python scripts/kernel_revision_race.py --rev 8e234b3 --target x86-64-v4
    python scripts/kernel_revision_race.py --rev 7bd30ec --calls --map recompute --stores streaming
    python scripts/kernel_revision_race.py --rev f3c696e --calls --gap-ms 50 --rounds 101   # each call after idle
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from cmgm_bench.measure.accuracy import reference_outputs, relative_error, tolerance_for
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench_impls.builders import kernels
from cmgm_bench_impls.fused import FusedCMGM

REPO = Path(__file__).resolve().parents[1]


CSRC, OLD_CSRC = "cmgm_bench_impls/builders/csrc", "impls/csrc"  # where the kernels are, and were before the package's rename


def build_revision(rev: str, target: str):
    """The operators of ``rev``'s kernels for ``target``, in the namespace ``cmgm_rev_<rev>``."""
    folder = Path(tempfile.mkdtemp(prefix=f"csrc_{rev}_"))
    csrc = CSRC if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}:{CSRC}"]).returncode == 0 else OLD_CSRC
    listing = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:{csrc}"],
                             capture_output=True, text=True, check=True).stdout.split()
    for name in listing:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{csrc}/{name}"], capture_output=True, check=True).stdout
        (folder / name).write_bytes(source)
    namespace = f"cmgm_rev_{rev}_{target.replace('-', '_')}"
    cpp_extension.load(
        name=namespace, sources=[str(folder / name) for name in listing if name.endswith(".cpp")],
        extra_cflags=["-O3", "-fopenmp", f"-DCMGM_NAMESPACE={namespace}", *kernels.TARGETS[target].cflags],
        extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False,
    )
    return getattr(torch.ops, namespace)


def race(call_this, call_other, rounds: int, reps: int) -> tuple[float, float, float]:
    """Median per-call seconds of each side and the median ratio this/other over alternating rounds."""
    this_s, other_s, ratios = [], [], []
    for _ in range(rounds):
        times = []
        for call in (call_other, call_this):
            started = time.perf_counter()
            for _ in range(reps):
                call()
            times.append((time.perf_counter() - started) / reps)
        other_s.append(times[0]), this_s.append(times[1]), ratios.append(times[1] / times[0])
    return statistics.median(this_s), statistics.median(other_s), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the other revision (a commit of this repository)")
    parser.add_argument("--target", default=kernels.best_target(), choices=list(kernels.TARGETS))
    parser.add_argument("--res", default="11,28", help="grid sides, comma-separated")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", action="store_true", help="race fused's whole fwd calls on the pool, not the operators")
    parser.add_argument("--map", default="recompute", choices=["kernel", "recompute"], help="with --calls: the map's path")
    parser.add_argument("--stores", default="streaming", choices=["cached", "streaming"], help="with --calls: the stores")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="with --calls: sleep this long before each timed call (one call a sample; the pools fall asleep)")
    args = parser.parse_args()
    this, _ = kernels.load(args.target)
    other = build_revision(args.rev, args.target)
    print(f"target {args.target}; times are per call, ratio = this checkout / {args.rev}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for side in (int(s) for s in args.res.split(",")):
            n, h, d = side * side, args.heads, 8
            if args.calls:
                race_calls(this, other, args, side, threads)
                continue
            q, k, v = torch.randn(1, n, 3, h, d).permute(2, 0, 3, 1, 4)  # strided, as the projections give them
            attn = torch.softmax(torch.randn(1, h, n, n), dim=-1)
            weight, bias = torch.randn(h, h, 3, 3), torch.randn(h)
            operators = {
                "attention": lambda ops: ops.softmax_attention(q, k, v, True, torch.float32),
                "map": lambda ops: ops.fused_map(attn, weight, bias),
            }
            for name, call in operators.items():
                torch.testing.assert_close(call(this), call(other), rtol=0, atol=0)
                mine, theirs, ratio = race(lambda: call(this), lambda: call(other), args.rounds, max(1, 20_000 // n))
                print(f"threads {threads}  {side}x{side}  {name:9s}  {args.rev} {1e3 * theirs:8.3f} ms   "
                      f"this {1e3 * mine:8.3f} ms   ratio {ratio:.3f}", flush=True)


def race_after_gap(call_this, call_other, rounds: int, gap_s: float) -> tuple[float, float, float]:
    """As race, one call a sample, each after ``gap_s`` of sleep, the order alternating by round."""
    this_s, other_s = [], []
    for index in range(rounds):
        for call, times in ((call_this, this_s), (call_other, other_s))[:: 1 if index % 2 else -1]:
            time.sleep(gap_s)
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    ratios = [mine / theirs for mine, theirs in zip(this_s, other_s)]
    return statistics.median(this_s), statistics.median(other_s), statistics.median(ratios)


def race_calls(this, other, args, side: int, threads: int) -> None:
    """fused's fwd call on the pool with each revision's operators, both within the float32 tolerance of float64."""
    module = reference_module(8 * args.heads, args.heads, 0, side, side).eval()
    x, y = make_inputs(1, 8 * args.heads, side, side, 0)
    reference = reference_outputs(module, x, y, train=False)
    calls = {}
    for name, operators in (("this", this), ("other", other)):
        fused = FusedCMGM(module, torch.float32)
        fused.use_kernels(operators, {"attention": "kernel", "map": args.map, "stores": args.stores})
        with torch.inference_mode():
            out, attn_map = fused.on_pool(x, y)
        for value, want in ((out, reference.out), (attn_map, reference.attn_map)):
            assert relative_error(value, want) <= tolerance_for("float32"), (name, relative_error(value, want))
        calls[name] = fused
    with torch.inference_mode():
        if args.gap_ms:
            mine, theirs, ratio = race_after_gap(lambda: calls["this"].on_pool(x, y), lambda: calls["other"].on_pool(x, y),
                                                 args.rounds, args.gap_ms / 1e3)
        else:
            mine, theirs, ratio = race(lambda: calls["this"].on_pool(x, y), lambda: calls["other"].on_pool(x, y), args.rounds,
                                       max(1, 20_000 // (side * side)))
    call = "fwd call after idle" if args.gap_ms else "fwd call"
    print(f"threads {threads}  {side}x{side}  {call}  {args.rev} {1e3 * theirs:8.3f} ms   this {1e3 * mine:8.3f} ms   "
          f"ratio {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
