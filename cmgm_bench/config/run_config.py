"""One validated configuration of a run, built once from preset, TOML file and command line.

:mod:`cmgm_bench.config.settings` layers the raw settings (a dict of option
names and values as a user writes them); :meth:`RunConfig.from_settings`
parses and validates them in one place into a frozen :class:`RunConfig`,
which keeps the raw form only to store it for ``--resume``. Commands that
time a single case (``ab``, ``profile``, ``flops``) validate through
:func:`single_cases`, the same path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch

from cmgm_bench import registry
from cmgm_bench.stats import StopRule
from cmgm_bench.config import settings as settings_module
from cmgm_bench.config.cases import (
    ALLOCATORS, DEFAULT_ALLOCATOR, Case, Sweep, dedupe, parse_choices, parse_positive_ints, parse_resolutions, split_list,
)
from cmgm_bench.config.shard import select
from cmgm_bench.errors import UsageError


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device: unknown device {device!r} (choose from cpu, cuda, auto)")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: CUDA is not available on this machine (torch {torch.__version__})")
    return device


EXECUTORS = ("local", "ray", "slurm")


# option -> (the setting it needs, the values that setting must have, how a message says it)
_ONLY_WITH = {
    "ray_address": ("executor", ("ray",), "--executor ray"),
    "cpu_slots": ("executor", ("ray", "slurm"), "--executor ray or slurm"),
    "slurm_cluster": ("executor", ("slurm",), "--executor slurm"),
    "slurm_partition": ("executor", ("slurm",), "--executor slurm"),
    "tf32": ("device", ("cuda",), "--device cuda"),
    "cudnn_benchmark": ("device", ("cuda",), "--device cuda"),
}


def check_only_with(raw: dict, device: str) -> None:
    """Refuse an option given a value other than its default where it has no effect (``--tf32`` on the CPU)."""
    for key, (needs, values, wanted) in _ONLY_WITH.items():
        have = device.split(":")[0] if needs == "device" else raw[needs]
        if raw[key] != settings_module.DEFAULTS[key] and have not in values:
            raise UsageError(f"--{key.replace('_', '-')} has no effect without {wanted}")


def check_cuda_options(device: str, tf32: bool, cudnn_benchmark: bool) -> None:
    """The CUDA-only options of a single-case command (``ab``, ``profile``), refused on the CPU as ``run`` refuses them."""
    check_only_with({**settings_module.DEFAULTS, "tf32": tf32, "cudnn_benchmark": cudnn_benchmark}, resolve_device(device))


def check_threads(threads: int | None) -> None:
    if threads is not None and threads <= 0:
        raise UsageError(f"--threads: {threads} must be positive")


def stop_rule_of(raw: Mapping) -> StopRule:
    """The stop rule the settings ``min_samples``, ``max_time`` and ``target_rel_iqr`` make."""
    return StopRule(min_samples=raw["min_samples"], max_time_s=raw["max_time"], target_rel_iqr=raw["target_rel_iqr"])


_DEFAULT = settings_module.DEFAULTS


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know, validated. Build it with :meth:`from_settings` or :meth:`build`.

    Each field below ``stop_rule`` is the setting of the same name (:data:`settings.SETTINGS`), with its default."""

    sweep: Sweep
    impl_files: tuple[str, ...] = ()
    stop_rule: StopRule = field(default_factory=lambda: stop_rule_of(_DEFAULT))
    threads: int | None = _DEFAULT["threads"]
    seed: int = _DEFAULT["seed"]
    cold_cache: bool = _DEFAULT["cold_cache"]
    tf32: bool = _DEFAULT["tf32"]
    cudnn_benchmark: bool = _DEFAULT["cudnn_benchmark"]
    memory: bool = _DEFAULT["memory"]  # measure resident and peak memory
    memory_guard: bool = _DEFAULT["memory_guard"]
    timeout: float | None = _DEFAULT["timeout"]  # seconds per case
    isolate: bool = _DEFAULT["isolate"]
    shard: str | None = _DEFAULT["shard"]
    strict: bool = _DEFAULT["strict"]
    fail_on_contention: bool = _DEFAULT["fail_on_contention"]
    report: bool = _DEFAULT["report"]
    count_instructions: bool = _DEFAULT["count_instructions"]
    ceilings_max_age: float = _DEFAULT["ceilings_max_age"]  # seconds an earlier run's ceilings are reused; 0: never
    executor: str = _DEFAULT["executor"]  # local, ray or slurm
    ray_address: str | None = _DEFAULT["ray_address"]  # None: start a local Ray instance
    slurm_cluster: str = _DEFAULT["slurm_cluster"]  # or "local": submitit's local executor
    slurm_partition: str | None = _DEFAULT["slurm_partition"]
    cpu_slots: int = _DEFAULT["cpu_slots"]  # timed CPU cases at once per node (Ray, local Slurm)
    allow_mixed_hosts: bool = _DEFAULT["allow_mixed_hosts"]
    repeats: int = _DEFAULT["repeats"]  # replicates of each case, in separate rounds over the sweep
    settings: Mapping = field(default_factory=dict, compare=False, repr=False)  # the raw form, stored for --resume

    @property
    def device(self) -> str:
        return self.sweep.devices[0]

    def cases(self) -> list[Case]:
        """The sweep's cases (this shard's, with ``--shard``), in running order."""
        return select(self.sweep.cases(), self.shard)

    @classmethod
    def build(cls, preset: str | None = None, config_file: Path | None = None, **options) -> "RunConfig":
        """From a preset, a TOML file and options named as ``run``'s (``impl="eager,sdpa"``, ``max_time=0.5``)."""
        given = {name: settings_module.check_value(name, value, name) for name, value in options.items()}
        return cls.from_settings(settings_module.combine(preset, config_file, given))

    @classmethod
    def from_settings(cls, raw: Mapping) -> "RunConfig":
        """Parse and validate raw settings (every key of :data:`settings.DEFAULTS`); raises :class:`UsageError`."""
        raw = {**settings_module.DEFAULTS, **raw}
        for spec in raw["impl_file"]:
            registry.load_file(spec)
        registry.load_entry_points()
        device = resolve_device(raw["device"])
        if raw["impl"]:
            names = dedupe(split_list(raw["impl"]))
        else:  # every implementation of the default sweep that can run on this device
            names = [name for name, impl in registry.all_implementations().items() if device in impl.devices and impl.in_default_sweep]
        for name in names:
            registry.get(name)
        if raw["min_samples"] < 1:
            raise UsageError(f"--min-samples: {raw['min_samples']} must be at least 1")
        for key in ("max_time", "target_rel_iqr") + (("timeout",) if raw["timeout"] is not None else ()):
            if not (math.isfinite(raw[key]) and raw[key] > 0):
                raise UsageError(f"--{key.replace('_', '-')}: {raw[key]} must be a positive number")
        if not (math.isfinite(raw["ceilings_max_age"]) and raw["ceilings_max_age"] >= 0):
            raise UsageError(f"--ceilings-max-age: {raw['ceilings_max_age']} must be 0 or a positive number of seconds")
        check_only_with(raw, device)
        check_threads(raw["threads"])
        if raw["executor"] not in EXECUTORS:
            raise UsageError(f"--executor: unknown executor {raw['executor']!r} (choose from {', '.join(EXECUTORS)})")
        if raw["slurm_cluster"] not in ("slurm", "local"):
            raise UsageError(f"--slurm-cluster: unknown cluster {raw['slurm_cluster']!r} (choose from slurm, local)")
        if raw["repeats"] < 1:
            raise UsageError(f"--repeats: {raw['repeats']} must be at least 1")
        if raw["cpu_slots"] < 1:
            raise UsageError(f"--cpu-slots: {raw['cpu_slots']} must be at least 1")
        sweep = Sweep(
            impls=tuple(names),
            devices=(device,),
            modes=tuple(dedupe(parse_choices(raw["mode"], "--mode", registry.MODES))),
            batches=tuple(dedupe(parse_positive_ints(raw["batch"], "--batch"))),
            resolutions=tuple(dedupe(parse_resolutions(raw["res"]))),
            heads=tuple(dedupe(parse_positive_ints(raw["heads"], "--heads"))),
            dims=tuple(dedupe(parse_positive_ints(raw["dim"], "--dim"))),
            allocators=tuple(dedupe(parse_choices(raw["allocator"], "--allocator", ALLOCATORS))),
        )
        if raw["executor"] != "local" and sweep.allocators != (DEFAULT_ALLOCATOR,):
            raise UsageError(f"--allocator {','.join(sweep.allocators)}: only the pinned allocator runs with --executor {raw['executor']}")
        copied = {f.name for f in dataclasses.fields(cls)} & settings_module.SETTINGS.keys()  # same name, same value
        config = cls(sweep=sweep, impl_files=tuple(raw["impl_file"]), stop_rule=stop_rule_of(raw),
                     settings=MappingProxyType(dict(raw)), **{name: raw[name] for name in copied})
        config.cases()  # a bad --shard is a usage error now, not when the run starts
        return config

def single_cases(impls: list[str], *, device: str, mode: str, batch, res, heads, dim, impl_files=()) -> list[Case]:
    """The cases of commands that time or count cases one at a time (``ab``, ``profile``, ``flops``): validated
    as ``run`` validates, one mode, every implementation able to run each case (else a :class:`UsageError`)."""
    config = RunConfig.build(
        impl=",".join(impls), impl_file=list(impl_files), device=device, mode=str(mode),
        batch=str(batch), res=str(res), heads=str(heads), dim=str(dim),
    )
    if len(config.sweep.modes) != 1:
        raise UsageError("--mode: give one mode")
    cases = config.cases()
    for case in cases:
        reason = registry.get(case.impl).unsupported_reason(case)
        if reason:
            raise UsageError(reason)
    return cases
