"""Benchmark cases, the sweep that expands into them, and parsing of size lists.

A case is one row of the results: ``impl, device, dtype, mode, batch, height,
width, heads, dim, allocator`` (the CPU allocator its process times under:
:mod:`cmgm_bench.measure.allocator`; older files without it were ``pinned``). A :class:`Sweep` is data (the values of each axis) and
:meth:`Sweep.cases` is its cross product, ordered so that cases sharing a
shape run next to each other (the float64 reference is computed once per shape).
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, fields

from cmgm_bench.errors import UsageError
from cmgm_bench.registry import MODES, get

KEY_COLUMNS = ("impl", "device", "dtype", "mode", "batch", "height", "width", "heads", "dim", "allocator")
DEFAULT_ALLOCATOR = "pinned"
ALLOCATORS = (DEFAULT_ALLOCATOR, "system", "jemalloc", "tcmalloc")  # measure.allocator says what each one is


def shape_label(batch, dim, height, width, heads) -> str:
    """``B1 64x28x28 h8``: the one way every table and message writes a shape."""
    return f"B{batch} {dim}x{height}x{width} h{heads}"


@dataclass(frozen=True, order=True)
class Case:
    impl: str
    device: str
    dtype: str
    mode: str
    batch: int
    height: int
    width: int
    heads: int
    dim: int
    allocator: str = DEFAULT_ALLOCATOR

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in KEY_COLUMNS)

    @property
    def shape_label(self) -> str:
        return shape_label(self.batch, self.dim, self.height, self.width, self.heads)

    @property
    def label(self) -> str:
        """``impl device mode shape`` (and ``[allocator]`` when not the default): how messages and tables name a case."""
        suffix = "" if self.allocator == DEFAULT_ALLOCATOR else f" [{self.allocator}]"
        return f"{self.impl} {self.device} {self.mode} {self.shape_label}{suffix}"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "Case":
        types = {f.name: f.type for f in fields(cls)}
        values = {**{f.name: f.default for f in fields(cls) if f.default is not MISSING}, **row}
        return cls(**{name: int(values[name]) if types[name] == "int" else str(values[name]) for name in KEY_COLUMNS})


def split_list(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"1,2,4"`` or ``["1,2", "4"]`` -> ``["1", "2", "4"]``."""
    items = [text] if isinstance(text, str) else list(text)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_positive_ints(text, option: str) -> list[int]:
    values = []
    for part in split_list(text):
        if not re.fullmatch(r"[+-]?\d+", part):
            raise UsageError(f"{option}: {part!r} is not an integer")
        value = int(part)
        if value <= 0:
            raise UsageError(f"{option}: {value} must be positive")
        values.append(value)
    if not values:
        raise UsageError(f"{option}: no value given")
    return values


def parse_resolutions(text, option: str = "--res") -> list[tuple[int, int]]:
    """``"11,28,32x24"`` -> ``[(11, 11), (28, 28), (32, 24)]`` as (height, width)."""
    sizes = []
    for part in split_list(text):
        match = re.fullmatch(r"([+-]?\d+)(?:[xX]([+-]?\d+))?", part)
        if not match:
            raise UsageError(f"{option}: {part!r} is not a size (use 28 or 32x24)")
        height = int(match.group(1))
        width = int(match.group(2)) if match.group(2) else height
        if height <= 0 or width <= 0:
            raise UsageError(f"{option}: {part!r} must be positive")
        sizes.append((height, width))
    if not sizes:
        raise UsageError(f"{option}: no value given")
    return sizes


def parse_choices(text, option: str, choices) -> list[str]:
    values = split_list(text)
    for value in values:
        if value not in choices:
            raise UsageError(f"{option}: unknown value {value!r} (choose from {', '.join(choices)})")
    if not values:
        raise UsageError(f"{option}: no value given")
    return values


def dedupe(values: list) -> list:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class Sweep:
    impls: tuple[str, ...]
    devices: tuple[str, ...]
    modes: tuple[str, ...]
    batches: tuple[int, ...]
    resolutions: tuple[tuple[int, int], ...]
    heads: tuple[int, ...]
    dims: tuple[int, ...]
    allocators: tuple[str, ...] = (DEFAULT_ALLOCATOR,)

    def __post_init__(self):
        for dim in self.dims:
            for heads in self.heads:
                if dim % heads:
                    raise UsageError(f"--dim {dim} is not divisible by --heads {heads}")
        for mode in self.modes:
            if mode not in MODES:
                raise UsageError(f"--mode: unknown mode {mode!r} (choose from {', '.join(MODES)})")

    def cases(self) -> list[Case]:
        impls = [get(name) for name in self.impls]
        out = [
            Case(impl.name, device, impl.dtype, mode, batch, height, width, heads, dim, allocator)
            for allocator in self.allocators
            for dim in self.dims
            for heads in self.heads
            for batch in self.batches
            for height, width in self.resolutions
            for device in self.devices
            for mode in self.modes
            for impl in impls
        ]
        return dedupe(out)
