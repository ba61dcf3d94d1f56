"""A run's metadata (``run.json``) as a typed record, and where each machine's ceilings are kept in it.

The fields are what the harness reads and writes; ``environment`` and ``settings``
stay mappings (a description of the machine, the raw settings as a user wrote them:
the whole configuration, from which ``RunConfig.from_settings`` rebuilds the rest).
Keys this version does not know, from older or newer files of the same schema
version (older runs also stored ``sweep`` and ``options``, derived from the
settings), are kept in ``other`` and written back unchanged.

Ceilings (:class:`~cmgm_bench.measure.ceilings.Ceilings`) are kept per device for
the first machine model (``ceilings``) and per machine model and device for any
other one (``machine_ceilings``: a run whose remote workers ran on several models).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from cmgm_bench.measure.ceilings import Ceilings

# The version of the files' layout; a file without one is version 1 (the same layout).
SCHEMA_VERSION = 1


@dataclass
class RunMeta:
    """``run.json``: what a run was, on what, with which settings, and the ceilings its cases are accounted against."""

    environment: dict = field(default_factory=dict)  # versions, CPU/GPU, threads, commit, host, command line
    settings: dict = field(default_factory=dict)  # the raw settings (config.settings): the configuration, stored once
    narrowed: str | None = None  # why the default sweep measured some implementations at its smallest grid only
    baseline: str | None = None  # None: a run older than the field (the registry's baseline)
    ceilings: dict[str, Ceilings] = field(default_factory=dict)  # device -> the first machine model's
    machine_ceilings: dict[str, dict[str, Ceilings]] = field(default_factory=dict)  # other model -> device -> ceilings
    resumed: list[str] = field(default_factory=list)  # start time of each resumption
    instruction_counts: dict | None = None  # how instructions were counted, where they were
    merged_from: list[str] | None = None  # the runs `merge` made this one from
    schema_version: int = SCHEMA_VERSION
    other: dict = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_json(cls, data: Mapping) -> "RunMeta":
        known = {f.name for f in dataclasses.fields(cls)} - {"other"}
        values = {key: value for key, value in data.items() if key in known}
        values["ceilings"] = {device: Ceilings.from_json(c) for device, c in (data.get("ceilings") or {}).items()}
        values["machine_ceilings"] = {
            machine: {device: Ceilings.from_json(c) for device, c in devices.items()}
            for machine, devices in (data.get("machine_ceilings") or {}).items()
        }
        return cls(**values, other={key: value for key, value in data.items() if key not in known})

    def to_json(self) -> dict:
        data = {
            "schema_version": self.schema_version, "environment": self.environment, "settings": self.settings,
            "baseline": self.baseline,
            "ceilings": {device: c.to_json() for device, c in self.ceilings.items()},
        }
        optional = {
            "machine_ceilings": {m: {d: c.to_json() for d, c in devices.items()} for m, devices in self.machine_ceilings.items()},
            "narrowed": self.narrowed, "resumed": self.resumed, "instruction_counts": self.instruction_counts,
            "merged_from": self.merged_from,
        }
        return {**data, **{key: value for key, value in optional.items() if value}, **self.other}

    def _first_model_is(self, device: str, machine: str | None) -> bool:
        """Whether ``device``'s first-model ceilings are ``machine``'s (any machine's in an older run, which names none)."""
        primary = self.ceilings.get(device)
        return primary is not None and (machine is None or primary.machine in (None, machine))

    def ceilings_of(self, device: str, machine: str | None) -> Ceilings | None:
        """The ceilings of ``device`` on ``machine`` (``None`` where none are stored yet)."""
        if self._first_model_is(device, machine):
            return self.ceilings[device]
        return self.machine_ceilings.get(machine, {}).get(device)

    def adopt_ceilings(self, device: str, machine: str, measured: Ceilings) -> bool:
        """Store the ceilings a worker measured on ``machine``, unless that machine model's are stored already;
        whether they were stored."""
        if self.ceilings_of(device, machine) is not None:
            return False
        self.store_ceilings(device, machine, dataclasses.replace(measured, machine=machine))
        return True

    def store_ceilings(self, device: str, machine: str | None, values: Ceilings) -> None:
        """Put ``values`` where :meth:`ceilings_of` finds the ceilings of ``device`` on ``machine``."""
        if device not in self.ceilings or self._first_model_is(device, machine):
            self.ceilings[device] = values
        else:
            self.machine_ceilings.setdefault(machine, {})[device] = values

    def all_ceilings(self) -> list[tuple[str | None, str, Ceilings]]:
        """Every stored ``(machine, device, ceilings)``, the first machine model's first."""
        return [(c.machine, device, c) for device, c in self.ceilings.items()] + [
            (machine, device, c) for machine, devices in self.machine_ceilings.items() for device, c in devices.items()
        ]

    @property
    def several_machines(self) -> bool:
        """Whether the run's cases of one device ran on several machine models, each with its own ceilings."""
        return bool(self.machine_ceilings)
