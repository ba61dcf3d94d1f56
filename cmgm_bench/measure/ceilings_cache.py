"""A machine's ceilings measured by an earlier run, reused while they are fresh (``run --ceilings-max-age``).

Measuring the ceilings (:mod:`cmgm_bench.measure.ceilings`) costs a run 0.5-2 s of both cores; a developer's
tenth small run of the hour, or a test suite's hundredth, measures nothing new by repeating it. A measurement is
kept in ``ceilings.json`` in the cache folder (:func:`cmgm_bench.cache.cache_dir`) under the conditions that
decide it: the machine model, the device, the threads and cores, the PyTorch build, the libraries'
instruction-set caps and the float32 matmul precision. A later run under the same conditions reuses it while it
is younger than the run's maximum age and covers the run's dtypes; otherwise the run measures afresh and keeps
its measurement for the next. A measurement taken while other work held more than
:data:`~cmgm_bench.measure.contention.CONTENDED_SHARE` of the cores is used by its own run but never kept: a
ceiling is the machine's best rate, and a busy neighbour's share would pass on as a low one. Each run's
``Ceilings.measured_at`` says when its ceilings were measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import datetime

import torch

from cmgm_bench.cache import cache_dir
from cmgm_bench.machine import cpu_features, env
from cmgm_bench.measure import ceilings, contention
from cmgm_bench.measure.ceilings import Ceilings
from cmgm_bench.measure.measurement import machine_model
from cmgm_bench.results.store import atomic_write_bytes


def this_machine(device: str) -> str:
    """The machine model a run's ceilings on ``device`` are measured on and kept under: the sweep's, and the one
    the test suite measures for its runs to reuse."""
    return machine_model(env.host_description(device), device)


def conditions(device: str, machine: str | None) -> str:
    """What decides a measurement of the ceilings, as one key: two runs under equal keys measure the same."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return json.dumps({
        "machine": machine, "device": device, "threads": torch.get_num_threads(), "cores": cores,
        "torch": torch.__version__, "matmul_precision": torch.get_float32_matmul_precision(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device.startswith("cuda") else None,
        "caps": cpu_features.library_isa_caps(),
    }, sort_keys=True)


def _path():
    return cache_dir() / "ceilings.json"


def _stored() -> dict:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):  # none yet, or a file another process is replacing: measure
        return {}


def _keep(key: str, measured: Ceilings) -> None:
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps({**_stored(), key: measured.to_json()}, indent=1).encode())


def _age_s(measured: Ceilings) -> float:
    return time.time() - datetime.fromisoformat(measured.measured_at).timestamp()


def _for_dtypes(measured: Ceilings, dtypes: set[str]) -> Ceilings:
    """``measured`` limited to the run's dtypes (a run of float32 cases lists no bfloat16 ceiling)."""
    def only(values):
        return {dtype: value for dtype, value in values.items() if dtype in dtypes}

    return dataclasses.replace(measured, matmul_gflops=only(measured.matmul_gflops), matmul_side=only(measured.matmul_side),
                               matmul_gflops_native=only(measured.matmul_gflops_native),
                               emulated=tuple(dtype for dtype in measured.emulated if dtype in dtypes))


def reuse_or_measure(device: str, dtypes, machine: str | None, max_age_s: float) -> tuple[Ceilings, float | None]:
    """The ceilings for a run's ``dtypes`` on ``device``, and the seconds measuring them took (``None``: reused).

    Reused from the cache when a measurement under the same :func:`conditions` is at most ``max_age_s`` old and
    covers the dtypes; ``max_age_s <= 0`` always measures."""
    wanted = set(dtypes) | {"float32"}
    key = conditions(device, machine)
    if max_age_s > 0:
        found = _stored().get(key)
        if found is not None:
            kept = Ceilings.from_json(found)
            if kept.measured_at and wanted <= set(kept.matmul_gflops_native) and 0 <= _age_s(kept) <= max_age_s:
                return _for_dtypes(kept, wanted), None
    started = time.perf_counter()
    watch = contention.Watch()
    measured = ceilings.measure(device, sorted(wanted), machine)
    reading = watch.reading()
    seconds = time.perf_counter() - started
    if reading is not None and not reading.contended:
        try:
            _keep(key, measured)
        except OSError:  # a read-only cache folder: this run's measurement still stands
            pass
    return measured, seconds
