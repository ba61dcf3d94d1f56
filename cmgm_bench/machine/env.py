"""The environment a run happened in: versions, hardware, threads, git commit, command line."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch

import cmgm_bench
from cmgm_bench.machine import cpu_features

from cmgm_bench.machine import process_setup
from cmgm_bench.measure import allocator
from cmgm_bench.measure.measurement import CPU_KEYS

# Keys that must agree for two runs to be compared (``compare`` refuses otherwise).
COMPARABLE_KEYS = ("cpu_model", "gpu_name", "torch_version", "threads", "cpu_allocator")
# Keys that must agree for ``run --resume`` to add cases to a run: one run, one machine and software.
MACHINE_KEYS = (*CPU_KEYS, "gpu_name", "torch_version", "cuda_version")


GIT_COMMIT_ENV = "CMGM_BENCH_GIT_COMMIT"
GIT_BRANCH_ENV = "CMGM_BENCH_GIT_BRANCH"


def _git(*args: str) -> str:
    repo = Path(__file__).resolve().parents[2]
    try:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def git_commit() -> str | None:
    """The checkout's commit; where the tree was copied without ``.git`` (a GPU machine), ``$CMGM_BENCH_GIT_COMMIT``.
    Neither: ``None``, and a warning on stderr (once per process), because history and gates key runs by commit."""
    commit = _git("rev-parse", "HEAD") or os.environ.get(GIT_COMMIT_ENV) or None
    if commit is None:
        _warn_no_commit()
    return commit


@functools.cache
def _warn_no_commit() -> None:
    sys.stderr.write(f"warning: no git commit to record (not a git checkout, and ${GIT_COMMIT_ENV} is not set)\n")


def git_branch() -> str | None:
    """The checkout's branch (``$CMGM_BENCH_GIT_BRANCH`` first: CI checks out a detached commit)."""
    branch = os.environ.get(GIT_BRANCH_ENV) or _git("rev-parse", "--abbrev-ref", "HEAD")
    return None if branch in ("", "HEAD") else branch


def cuda_info(device: str) -> dict:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {"gpu_name": None, "cuda_version": None, "cudnn_version": None}
    return {
        "gpu_name": torch.cuda.get_device_name(device),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        **process_setup.cuda_arithmetic(),
    }


def collect(device: str = "cpu", argv: list[str] | None = None) -> dict:
    return {
        "project_version": cmgm_bench.__version__,
        "git_commit": git_commit(),
        "git_branch": git_branch(),
        "hostname": platform.node(),
        "command_line": " ".join(argv if argv is not None else sys.argv),
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_uuid": uuid.uuid4().hex,  # tells apart two runs of one command started in the same second
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        **cpu_features.describe(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available(),
        "cpu_allocator": allocator.policy(),
        "inductor_isa_check": process_setup.inductor_isa_check(),
        **cuda_info(device),
    }


def host_description(device: str) -> dict:
    """Where a case ran (``Measurement.host``): host name, CPU model, family/model and instruction sets, GPU model
    (``None`` on the CPU); ``measurement.machine_model`` names the machine from it."""
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else None
    cpu = cpu_features.describe()
    return {"hostname": platform.node(), **{key: cpu[key] for key in CPU_KEYS},
            "gpu_name": gpu}
