"""Process-wide state a timing process sets up: Inductor's instruction-set check, and the frozen heap."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import uuid
import weakref

import pytest

from cmgm_bench.machine import cpu_features, process_setup
from cmgm_bench.measure import heap

PICKED_ISA = """
import json, os, sys
from cmgm_bench.machine.process_setup import prepare_process
prepare_process(1)
from torch._inductor import config, cpu_vec_isa
print(json.dumps({"env": os.environ.get("TORCHINDUCTOR_VEC_ISA_OK"), "vec_isa_ok": config.cpp.vec_isa_ok,
                  "picked": str(cpu_vec_isa.pick_vec_isa())}))
"""


def picked_isa(**env_changes) -> dict:
    env = {key: value for key, value in os.environ.items() if key != process_setup.VEC_ISA_ENV}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", PICKED_ISA], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="Inductor's vector probes are x86 here")
def test_trusting_the_cpu_flags_picks_the_instruction_set_the_compile_probe_picks():
    trusted = picked_isa()
    probed = picked_isa(TORCHINDUCTOR_VEC_ISA_OK="")  # set but neither 0 nor 1: Inductor probes, and we keep it
    assert trusted["env"] == "1" and trusted["vec_isa_ok"] is True
    assert probed["env"] == "" and probed["vec_isa_ok"] is None
    assert trusted["picked"] == probed["picked"] != ""


def test_a_users_choice_of_the_instruction_set_check_is_kept_and_recorded(monkeypatch):
    monkeypatch.setenv(process_setup.VEC_ISA_ENV, "0")
    process_setup.trust_cpu_flags_for_inductor()
    assert os.environ[process_setup.VEC_ISA_ENV] == "0"
    assert process_setup.inductor_isa_check() == "vectorisation off (TORCHINDUCTOR_VEC_ISA_OK=0)"
    monkeypatch.delenv(process_setup.VEC_ISA_ENV)
    assert process_setup.inductor_isa_check() == "CPU flags trusted (TORCHINDUCTOR_VEC_ISA_OK=1)"


class Node:
    next: object = None


def test_survivors_are_frozen_after_an_import_and_garbage_is_still_collected(tmp_path, monkeypatch):
    name = f"cmgm_heap_probe_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("TABLE = [[index] for index in range(1000)]\n")
    (tmp_path / f"{name}_outside.py").write_text("VALUE = 1.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with monkeypatch.context() as outside:  # as in a Ray worker: no frozen block (the test session holds one)
        outside.setattr(heap, "_depth", 0)
        __import__(name + "_outside")
        assert not heap.freeze_if_imported()  # nothing would unfreeze it
    with heap.frozen():
        assert not heap.freeze_if_imported()  # nothing imported since the block started
        frozen_before = gc.get_freeze_count()
        __import__(name)
        assert heap.freeze_if_imported()
        assert gc.get_freeze_count() >= frozen_before + 1000  # the module's table lives on, frozen
        assert not heap.freeze_if_imported()

        cycle = Node()
        cycle.next = cycle
        alive = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is None  # a cycle made after the freeze is still garbage collected
    sys.modules.pop(name), sys.modules.pop(name + "_outside")


def test_only_the_outermost_frozen_block_unfreezes():
    gc.collect()
    with heap.frozen():
        outer = gc.get_freeze_count()
        with heap.frozen():
            pass
        assert gc.get_freeze_count() >= outer > 0


def test_the_libraries_instruction_set_caps_key_the_compile_caches(monkeypatch):
    """A graph Inductor compiled without the caps, reused under them, computed NaN (its cache does not key on them):
    with caps, PyTorch's compile cache key carries them, for this process and its children, a user's tag kept."""
    import torch.compiler.config

    monkeypatch.setattr(torch.compiler.config, "cache_key_tag", "")
    monkeypatch.setenv(process_setup.CACHE_KEY_TAG_ENV, "")
    for name in cpu_features.LIBRARY_ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    process_setup.key_compile_caches_by_library_isa()
    assert torch.compiler.config.cache_key_tag == "" and os.environ[process_setup.CACHE_KEY_TAG_ENV] == ""
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv(process_setup.CACHE_KEY_TAG_ENV, "mine")
    for _ in range(2):  # every timing command sets its process up; the tag says it once
        process_setup.key_compile_caches_by_library_isa()
    expected = "mine|isa-caps:ATEN_CPU_CAPABILITY=avx2,DNNL_MAX_CPU_ISA=AVX2"
    assert torch.compiler.config.cache_key_tag == expected and os.environ[process_setup.CACHE_KEY_TAG_ENV] == expected
