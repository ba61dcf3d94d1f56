"""The settings of a ``run``: defaults, presets, sweep files, and how they combine.

Layers, later wins: built-in defaults < ``--preset`` < ``--config FILE.toml``
< options given on the command line. ``--resume`` takes the settings stored
in the run directory instead, and refuses command-line values that would
change the sweep. Every key is a ``run`` option name with ``_`` for ``-``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmgm_bench.errors import UsageError

@dataclass(frozen=True)
class Setting:
    """One setting: its default, the types a TOML file may give it, and whether ``--resume`` may change it."""

    default: Any
    types: tuple[type, ...] = ()  # a TOML value's types (a bool's: bool; a list's: names or numbers)
    resumable: bool = False  # may differ on --resume: it does not change what a case measures
    listed: bool = False  # a list: "11,28" or [11, 28] in TOML


_OPTIONAL_STR, _OPTIONAL_INT, _NUMBER = (str, type(None)), (int, type(None)), (int, float)

# Every setting of a run, by its option name with ``_`` for ``-``: the one table the defaults, the TOML checks,
# the resumable set and (through DEFAULTS) the Typer options and RunConfig's fields come from.
SETTINGS: dict[str, Setting] = {
    "impl": Setting(None, listed=True),  # None: every registered implementation of the default sweep
    "impl_file": Setting([], resumable=True, listed=True),
    "device": Setting("cpu", (str,)),
    "mode": Setting("fwd", listed=True),
    "batch": Setting("1", listed=True),
    "res": Setting("11,28,48", listed=True),
    "heads": Setting("8", listed=True),
    "dim": Setting("64", listed=True),
    "allocator": Setting("pinned", listed=True),
    "threads": Setting(None, _OPTIONAL_INT),
    "seed": Setting(0, (int,)),
    "max_time": Setting(2.0, _NUMBER),
    "min_samples": Setting(10, (int,)),
    "target_rel_iqr": Setting(0.03, _NUMBER),
    "repeats": Setting(1, (int,), resumable=True),  # more replicates of the same cases: --resume RUN --repeats 3 adds rounds
    "cold_cache": Setting(False),
    "tf32": Setting(False),
    "cudnn_benchmark": Setting(False),
    "memory": Setting(True),
    "memory_guard": Setting(True, resumable=True),
    "timeout": Setting(None, (int, float, type(None)), resumable=True),
    "isolate": Setting(False, resumable=True),
    "shard": Setting(None, _OPTIONAL_STR),
    "strict": Setting(False, resumable=True),
    "fail_on_contention": Setting(False, resumable=True),
    "report": Setting(True, resumable=True),
    "count_instructions": Setting(False),
    "ceilings_max_age": Setting(900.0, _NUMBER, resumable=True),  # seconds; 0: measure the ceilings in every run
    "executor": Setting("local", (str,), resumable=True),
    "ray_address": Setting(None, _OPTIONAL_STR, resumable=True),
    "slurm_cluster": Setting("slurm", (str,), resumable=True),
    "slurm_partition": Setting(None, _OPTIONAL_STR, resumable=True),
    "cpu_slots": Setting(1, (int,)),
    "allow_mixed_hosts": Setting(False, resumable=True),
}

DEFAULTS: dict = {name: setting.default for name, setting in SETTINGS.items()}
RESUMABLE_CHANGES = {name for name, setting in SETTINGS.items() if setting.resumable}

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

def check_value(key: str, value, where: str):
    """Return ``value`` normalised for ``key``; a :class:`UsageError` naming the key if it is wrong."""
    if key not in SETTINGS:
        raise UsageError(f"{where}: unknown key {key!r}")
    setting = SETTINGS[key]
    if isinstance(setting.default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {key!r} must be true or false, not {value!r}")
        return value
    if setting.listed:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in items):
            raise UsageError(f"{where}: {key!r} must be a string, an integer or a list of them")
        if key == "impl_file":
            return [str(item) for item in items]
        return ",".join(str(item) for item in items)
    types = setting.types
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
