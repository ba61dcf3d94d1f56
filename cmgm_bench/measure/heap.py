"""The Python heap between cases: what lives for the whole run is frozen, so each case's
garbage collection scans only the objects that case made.

Every case ends with a full collection (and the memory call starts with one), so
that cyclic garbage holding tensors is freed before the next case. A full
collection scans every tracked object: after the first ``torch.compile`` of a
process, Inductor, sympy and the ONNX exporter add ~300,000 of them and each
collection costs ~0.15 s (two per case). Objects that already existed when the
run started are frozen by :func:`frozen`; after a case that imported modules, what
survived its clean-up is frozen too, until the block ends (:func:`freeze_if_imported`). A frozen object
is still freed when its last reference goes; only cyclic garbage among frozen
objects waits until the run ends (:func:`frozen` unfreezes, and the next full
collection takes it).
"""

from __future__ import annotations

import contextlib
import gc
import sys

_modules_at_last_freeze = 0
_depth = 0  # blocks of frozen() open: only the outermost unfreezes


@contextlib.contextmanager
def frozen():
    """Freeze what exists now for the duration of the block (a run's cases, a test session)."""
    global _modules_at_last_freeze, _depth
    gc.freeze()
    _modules_at_last_freeze = len(sys.modules)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()


def freeze_if_imported() -> bool:
    """After a case's clean-up collection, inside a :func:`frozen` block: freeze the survivors if modules
    were imported since the last freeze (they live as long as the process). Returns whether it froze.
    Outside a block (a Ray worker, an ``--isolate`` child) it does nothing: nothing would unfreeze them."""
    global _modules_at_last_freeze
    if _depth == 0 or len(sys.modules) <= _modules_at_last_freeze:
        return False
    gc.freeze()
    _modules_at_last_freeze = len(sys.modules)
    return True
