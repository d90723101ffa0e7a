"""How the engine finds the handler of an operation: a method marked `@handles(SomeOp)` on one of
the engine's parts (`engine/local.py`, the session service), collected once by `handlers(...)`.
A new operation is then its struct (`protocol/ops.py`), its marked handler and the route that
sends it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__rnnserve_handles__"


def handles(op: type) -> Callable[[F], F]:
    """Mark a method as the handler of the operation `op` (one handler per operation)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, op)
        return fn

    return mark


def handlers(*parts: object) -> dict[type, Callable[..., Any]]:
    """Each operation's handler, bound to the part that defines it."""
    out: dict[type, Callable[..., Any]] = {}
    for part in parts:
        for name in dir(type(part)):
            op = getattr(getattr(type(part), name, None), _MARK, None)
            if op is None:
                continue
            if op in out:
                raise TypeError(f"two handlers for {op.__name__}")
            out[op] = getattr(part, name)
    return out
