"""`Engine.generate_many`: stateless generations started together, each one's error its own,
each stream exactly what `generate` gives it alone."""

from __future__ import annotations

from service.engine.engine import Engine, Generation
from service.errors import ServiceError
from service.protocol.events import TokenEvent
from service.protocol.messages import GenerateParams
from tests.service.conftest import CLS, LM, ClientFactory, app_of


async def _ids(gen: Generation) -> list[int]:
    return [ev.token_id async for ev in gen.events() if isinstance(ev, TokenEvent)]


async def test_generations_started_together_each_fail_alone_and_give_what_they_give_alone(
    make_client: ClientFactory,
) -> None:
    async with make_client() as c:
        engine: Engine = app_of(c).state.local.engine
        p = GenerateParams("ROMEO:", 6, 1.0, seed=7)
        asks = [
            (LM, p, None),
            ("nope", p, None),
            (CLS, p, None),  # a classifier: no generation
            (LM, GenerateParams(None, 3, 1.0, seed=8), None),  # no prompt: primed
        ]
        out = await engine.generate_many(asks)
        assert isinstance(out[1], ServiceError) and out[1].code == "model_not_found"
        assert isinstance(out[2], ServiceError) and out[2].code == "unsupported_task"
        first, primed = out[0], out[3]
        assert isinstance(first, Generation) and isinstance(primed, Generation)
        assert not first.stream.keep_final  # (nothing commits a stateless generation's state)
        assert primed.stream.prompt_tokens > 0
        assert len(await _ids(primed)) == 3
        alone = await engine.generate(LM, p)
        assert await _ids(first) == await _ids(alone)
