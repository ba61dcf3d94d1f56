"""The settings of a ``run``: defaults, presets, sweep files, and how they combine.

Layers, later wins: built-in defaults < ``--preset`` < ``--config FILE.toml``
< options given on the command line. ``--resume`` takes the settings stored
in the run directory instead, and refuses command-line values that would
change the sweep. Every key is a ``run`` option name with ``_`` for ``-``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from cmgm_bench.errors import UsageError

DEFAULTS: dict = {
    "impl": None,  # None: every registered implementation
    "impl_file": [],
    "device": "cpu",
    "mode": "fwd",
    "batch": "1",
    "res": "11,28,48",
    "heads": "8",
    "dim": "64",
    "allocator": "pinned",
    "threads": None,
    "seed": 0,
    "max_time": 2.0,
    "min_samples": 10,
    "target_rel_iqr": 0.03,
    "repeats": 1,
    "cold_cache": False,
    "tf32": False,
    "cudnn_benchmark": False,
    "memory": True,
    "memory_guard": True,
    "timeout": None,
    "isolate": False,
    "shard": None,
    "strict": False,
    "fail_on_contention": False,
    "report": True,
    "count_instructions": False,
    "executor": "local",
    "ray_address": None,
    "slurm_cluster": "slurm",
    "slurm_partition": None,
    "cpu_slots": 1,
    "allow_mixed_hosts": False,
}

PRESETS: dict[str, dict] = {
    "quick": {"impl": "eager,sdpa", "res": "11,28", "max_time": 0.5},
    "default": {},
    "pgnet": {"res": "28", "batch": "1,4", "mode": "fwd,feature,train"},
    "scaling": {"impl": "eager,sdpa,compile", "res": "8,11,16,22,28,34,40,48", "mode": "fwd,feature"},
    "ci": {"impl": "eager,sdpa,channels_last", "res": "8,11,28", "mode": "fwd,feature", "threads": 1, "max_time": 0.5, "seed": 0},
}

PRESET_HELP = (
    "quick: eager and sdpa at 11 and 28, short budget; default: every implementation at 11, 28 and 48; "
    "pgnet: PGNet's 28x28 at B=1,4 in all three modes; scaling: N from 64 to 2304 for eager, sdpa and compile; "
    "ci: single-thread sweep at 8, 11 and PGNet's 28 in fwd and feature, used for committed CI baselines "
    "(with --count-instructions: under 90 s on 2 vCPUs)."
)

# Settings that may differ when a run is resumed: they do not change what a case measures.
RESUMABLE_CHANGES = {
    "isolate", "timeout", "memory_guard", "strict", "fail_on_contention", "report", "impl_file", "executor", "ray_address",
    "allow_mixed_hosts", "slurm_cluster", "slurm_partition",
    "repeats",  # more replicates of the same cases: --resume RUN --repeats 3 adds rounds
}

_LIST_KEYS = {"impl", "mode", "batch", "res", "heads", "dim", "allocator", "impl_file"}
_TYPES = {
    "device": (str,),
    "threads": (int, type(None)),
    "seed": (int,),
    "max_time": (int, float),
    "min_samples": (int,),
    "target_rel_iqr": (int, float),
    "repeats": (int,),
    "timeout": (int, float, type(None)),
    "shard": (str, type(None)),
    "executor": (str,),
    "ray_address": (str, type(None)),
    "slurm_cluster": (str,),
    "slurm_partition": (str, type(None)),
    "cpu_slots": (int,),
}


def check_value(key: str, value, where: str):
    """Return ``value`` normalised for ``key``; a :class:`UsageError` naming the key if it is wrong."""
    if key not in DEFAULTS:
        raise UsageError(f"{where}: unknown key {key!r}")
    if key in _LIST_KEYS:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in items):
            raise UsageError(f"{where}: {key!r} must be a string, an integer or a list of them")
        if key == "impl_file":
            return [str(item) for item in items]
        return ",".join(str(item) for item in items)
    if isinstance(DEFAULTS[key], bool):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {key!r} must be true or false, not {value!r}")
        return value
    types = _TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types if t is not type(None))
        raise UsageError(f"{where}: {key!r} must be {names}, not {value!r}")
    return value


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise UsageError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return dict(PRESETS[name])


def load_config(path: Path) -> dict:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--config: {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"--config: {path} is not valid TOML ({exc})") from None
    return {key: check_value(key, value, f"--config {path}") for key, value in data.items()}


def combine(preset_name: str | None, config: Path | None, given: dict) -> dict:
    settings = dict(DEFAULTS)
    if preset_name:
        settings.update(preset(preset_name))
    if config:
        settings.update(load_config(config))
    settings.update(given)
    return settings


def resumed(stored: dict, given: dict, run_dir: Path) -> dict:
    """The stored settings of ``run_dir``, with only harmless command-line changes allowed."""
    settings = {**DEFAULTS, **stored}
    for key, value in given.items():
        if key in RESUMABLE_CHANGES:
            settings[key] = value
        elif value != settings.get(key):
            raise UsageError(
                f"--resume {run_dir} is a different sweep: it has {key.replace('_', '-')}={settings.get(key)!r}, not {value!r}"
            )
    return settings
