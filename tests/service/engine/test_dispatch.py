"""An operation finds its one handler: a method marked `@handles(Op)` on one of the engine's
parts; every operation has exactly one in the in-process engine."""

from __future__ import annotations

import pytest

from service.engine.dispatch import batchers, handlers, handles, handles_batch
from service.protocol import ops
from tests.service.conftest import ClientFactory, app_of


class _Part:
    def __init__(self, name: str) -> None:
        self.name = name

    @handles(ops.Health)
    async def health(self, _op: ops.Health) -> dict[str, str]:
        return {"part": self.name}

    async def helper(self) -> None:  # not marked: not a handler
        return None

    @handles_batch(ops.Health)
    async def healths(self, calls: object, reply: object, gone: object) -> None:
        return None


class _Other:
    @handles(ops.Health)
    async def also_health(self, _op: ops.Health) -> dict[str, str]:
        return {}


async def test_a_marked_method_handles_its_operation_bound_to_its_part() -> None:
    found = handlers(_Part("a"))
    assert set(found) == {ops.Health}
    assert await found[ops.Health](ops.Health()) == {"part": "a"}


def test_two_handlers_for_one_operation_are_refused() -> None:
    with pytest.raises(TypeError, match="two handlers for Health"):
        handlers(_Part("a"), _Other())


async def test_the_engine_handles_every_operation(make_client: ClientFactory) -> None:
    async with make_client() as c:
        local = app_of(c).state.local
        assert set(handlers(*local.parts)) == set(ops.operations())


def test_a_batch_handler_is_found_apart_from_the_handler() -> None:
    part = _Part("a")
    assert batchers(part) == {ops.Health: part.healths}
    assert handlers(part) == {ops.Health: part.health}


async def test_in_the_engine_session_feeds_have_a_batch_handler(make_client: ClientFactory) -> None:
    async with make_client() as c:
        local = app_of(c).state.local
        assert local.batcher(ops.Feed) == local.sessions.feed_batch
        assert local.batcher(ops.Health) is None
