"""The registry of CMGM implementations.

An implementation is a name, a one-line description, the devices and modes it
supports, its compute dtype and a builder ``build(reference_module, case)``
that returns ``fn(x, y) -> (out, attn_map)`` (``attn_map`` is ``None`` in
``feature`` mode) or a :class:`Built`. Built-in implementations, entry points
of the group ``cmgm_bench.impls`` and user files all register through
:func:`register`; the harness only ever looks implementations up by the name
it was given.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterator

from cmgm_bench.errors import UsageError

MODES = ("fwd", "feature", "train")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
ENTRY_POINT_GROUP = "cmgm_bench.impls"


class Unsupported(Exception):
    """Raised by a builder (or its first call) when the case cannot run here; the message is the reason."""


@dataclass
class Built:
    """What a builder may return instead of a bare callable.

    ``prepare_inputs`` runs once, outside the timed region, to put the inputs
    in the form the implementation expects (for example channels-last).
    ``module`` is the module whose parameters ``fn`` uses, when it is not the
    one the builder was given (train mode clears its gradients each step).
    ``notes`` are recorded in the results as they are; ``variant`` is a short
    label of the code path that runs (a kernel target, a provider), shown in
    the ``variant`` column. ``held_bytes`` returns the memory the implementation
    keeps for its calls outside the call itself (a CUDA graph's private pool,
    allocated at capture); it is recorded in the case's notes (the resident
    figure, measured from the device, already holds it).
    """

    fn: Callable[..., Any]
    prepare_inputs: Callable[[Any, Any], tuple[Any, Any]] | None = None
    module: Any = None
    notes: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    held_bytes: Callable[[], int | None] | None = None


@dataclass(frozen=True)
class Implementation:
    name: str
    description: str
    build: Callable[..., Any]
    devices: tuple[str, ...]
    modes: tuple[str, ...]
    dtype: str
    source: str
    check: Callable[[Any], str | None] | None = None
    baseline: bool = False
    requires: Callable[[], str | None] | None = None
    in_default_sweep: bool = True

    def missing(self) -> str | None:
        """What this machine lacks for the implementation to run at all (with the install hint), or ``None``."""
        return self.requires() if self.requires else None

    def unsupported_reason(self, case) -> str | None:
        """Why this implementation cannot run ``case``, or ``None`` if it can."""
        missing = self.missing()
        if missing:
            return missing
        if case.device not in self.devices:
            return f"{self.name} supports devices {', '.join(self.devices)}, not {case.device}"
        if case.mode not in self.modes:
            return f"{self.name} supports modes {', '.join(self.modes)}, not {case.mode}"
        return self.check(case) if self.check else None


_REGISTRY: dict[str, Implementation] = {}
_capture: list[dict[str, Implementation]] = []
_loaded_entry_points = False


def register(
    name: str,
    *,
    description: str,
    devices: tuple[str, ...] = DEVICES,
    modes: tuple[str, ...] = MODES,
    dtype: str = "float32",
    check: Callable[[Any], str | None] | None = None,
    baseline: bool = False,
    requires: Callable[[], str | None] | None = None,
    in_default_sweep: bool = True,
):
    """Decorator that registers ``build`` as the implementation ``name``.

    ``check(case)`` may return a reason why a case the declared devices and
    modes admit still cannot run (a missing compiler, an unsupported dtype).
    ``requires()`` may return what the machine lacks for any case to run (an
    optional package, with the command that installs it); ``list`` shows it.
    ``baseline`` marks the implementation that speed-ups are measured against.
    ``in_default_sweep=False`` leaves the implementation out of a sweep that
    names no ``--impl`` (for builds that take tens of seconds per shape).
    """
    bad = [d for d in devices if d not in DEVICES] + [m for m in modes if m not in MODES]
    if bad or dtype not in DTYPES:
        raise ValueError(f"implementation {name!r}: unknown device/mode/dtype {bad or dtype}")

    def decorator(build):
        impl = Implementation(
            name=name,
            description=description,
            build=build,
            devices=tuple(devices),
            modes=tuple(modes),
            dtype=dtype,
            source=inspect.getsourcefile(build) or "?",
            check=check,
            baseline=baseline,
            requires=requires,
            in_default_sweep=in_default_sweep,
        )
        target = _capture[-1] if _capture else _REGISTRY
        if name in target:
            raise ValueError(f"implementation {name!r} is registered twice")
        target[name] = impl
        return build

    return decorator


@contextlib.contextmanager
def _capturing() -> Iterator[dict[str, Implementation]]:
    captured: dict[str, Implementation] = {}
    _capture.append(captured)
    try:
        yield captured
    finally:
        _capture.pop()


def load_entry_points() -> None:
    """Import every module of the ``cmgm_bench.impls`` entry-point group once."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        with _capturing() as captured:
            ep.load()
        for impl in captured.values():
            _REGISTRY.setdefault(impl.name, impl)


def load_file(spec: str, prefix: str = "") -> list[str]:
    """Load a user's implementation file; ``spec`` is ``PATH`` or ``NAME=PATH``.

    With ``NAME=`` the file must register exactly one implementation, which is
    registered under ``NAME``; with ``prefix``, each implementation the file
    registers is registered as ``prefix + name`` (``gate`` loads two revisions
    of a file side by side so). A user file may replace a built-in of the same
    name (the ``source`` column shows which one ran). Returns the names added.
    """
    load_entry_points()
    rename, _, path_text = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"implementation file not found: {path}")
    module_name = f"cmgm_bench_user_{abs(hash((str(path.resolve()), rename, prefix)))}"
    try:
        with _capturing() as captured:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
    except Exception as exc:  # any import failure is the user's file's fault
        raise UsageError(f"implementation file {path} failed to import: {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:  # sys.exit() at import: the file's doing, not the command's exit code
        raise UsageError(f"implementation file {path} called sys.exit({exc.code!r}) while importing") from None
    if not captured:
        raise UsageError(f"implementation file {path} registers no implementation")
    if rename:
        if len(captured) != 1:
            raise UsageError(f"{spec}: NAME= needs a file that registers one implementation, {path} registers {len(captured)}")
        captured = {rename: replace(next(iter(captured.values())), name=rename)}
    if prefix:
        captured = {prefix + name: replace(impl, name=prefix + name) for name, impl in captured.items()}
    _REGISTRY.update(captured)
    return list(captured)


def all_implementations() -> dict[str, Implementation]:
    """Every registered implementation, the baseline first, then by name."""
    load_entry_points()
    ordered = sorted(_REGISTRY.values(), key=lambda impl: (not impl.baseline, impl.name))
    return {impl.name: impl for impl in ordered}


def get(name: str) -> Implementation:
    impls = all_implementations()
    if name not in impls:
        raise UsageError(f"unknown implementation {name!r} (known: {', '.join(sorted(impls))})")
    return impls[name]


def baseline_name() -> str | None:
    """The implementation registered with ``baseline=True`` (speed-ups are relative to it)."""
    return next((impl.name for impl in all_implementations().values() if impl.baseline), None)
