"""How the engine finds the handler of an operation: a method marked `@handles(SomeOp)` on one of
the engine's parts (`engine/local.py`, the session service), collected once by `handlers(...)`.
A new operation is then its struct (`protocol/ops.py`), its marked handler and the route that
sends it. An operation may also have a batch handler (`@handles_batch`): the engine process runs
the calls of it that it reads from one worker together (`transport/host.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

F = TypeVar("F", bound=Callable[..., Any])

# each call's outcome as soon as it is known: (its index in the batch, its result or error)
Reply = Callable[[int, Any], None]


class Batcher(Protocol):
    """A batch handler: (the calls, reply, the indexes of calls whose caller has gone: their
    outcome is not wanted, and nothing of theirs is committed after they went, and, tracing
    on, each call's span in the engine when it was sampled: the parent of that call's spans)."""

    def __call__(
        self,
        ops: Sequence[Any],
        reply: Reply,
        gone: Container[int],
        traces: Sequence[SpanContext | None] | None = None,
    ) -> Awaitable[None]: ...


_MARK = "__rnnserve_handles__"
_BATCH = "__rnnserve_handles_batch__"


def handles(op: type) -> Callable[[F], F]:
    """Mark a method as the handler of the operation `op` (one handler per operation)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, op)
        return fn

    return mark


def handles_batch(op: type) -> Callable[[F], F]:
    """Mark a method as the batch handler (a `Batcher`) of the operation `op`."""

    def mark(fn: F) -> F:
        setattr(fn, _BATCH, op)
        return fn

    return mark


def handlers(*parts: object, mark: str = _MARK) -> dict[type, Callable[..., Any]]:
    """Each operation's handler, bound to the part that defines it."""
    out: dict[type, Callable[..., Any]] = {}
    for part in parts:
        for name in dir(type(part)):
            op = getattr(getattr(type(part), name, None), mark, None)
            if op is None:
                continue
            if op in out:
                raise TypeError(f"two handlers for {op.__name__}")
            out[op] = getattr(part, name)
    return out


def batchers(*parts: object) -> dict[type, Batcher]:
    """Each operation's batch handler, bound to the part that defines it; none of a part
    whose `batching` is False (the session service over a store whose locks need I/O)."""
    return handlers(*(p for p in parts if getattr(p, "batching", True)), mark=_BATCH)
