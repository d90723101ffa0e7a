"""The start-up heap, out of the garbage collector's way.

A busy server allocates fast (a frame per token per stream, a struct per message), so CPython's
cyclic collector runs often, and every full collection walks every tracked object: the modules,
the FastAPI app and its pydantic schemas, the models' sessions, hundreds of thousands of objects
that live as long as the process. At 256 streams an API worker spent ~10 % of its time in those
collections (gc callbacks, docs/benchmarks.md). `gc.freeze()` after start-up moves them to the
permanent generation, which collections skip; what requests allocate is collected as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def freeze_startup_heap() -> None:
    """Exempt every object alive now from later collections (call once, when the process is
    ready to serve).

    No `gc.collect()` first: a collection writes to every object it visits, and in a worker or
    engine forked from the fork server (processes.py) most of those objects sit in pages shared
    with it; writing them copied ~16 MB per process (idle PSS of 1 worker: 191 -> 221 MB).
    `gc.freeze()` only relinks the generations' lists. What start-up left as garbage stays,
    once."""
    gc.freeze()


def give_back_unloaded() -> None:
    """After a model is unloaded: collect what it left in cycles made since start-up, and hand
    the C heap's free pages back to the system (glibc keeps them otherwise: an unloaded graph's
    session then still counted in the process's RSS). An operator's action, not a request's:
    the full collection's cost is paid once per unload."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)
