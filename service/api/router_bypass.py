"""Direct dispatch of the hottest routes, a session feed, a prediction and a streamed
generation, past FastAPI's router and dependency injection.

Why: a session step costs an API worker ~0.3 ms of CPU, and with one worker that worker is the
whole server's limit. FastAPI's part of it, a regex per declared route until one matches, the
dependency solver, the exception and exit-stack middlewares, was about a fifth (py-spy under the
`python -m bench` step load; docs/benchmarks.md has the A/B).

Why it cannot change the API: the routes stay declared in `sessions.py` and `models.py` (the
OpenAPI schema comes from there) and run the same handler functions. This layer takes only a
request it can answer exactly as that route would: a POST to the route's exact path, a
`Content-Type` of `application/json`, a body that parses to an object that the route's own
pydantic model accepts, and headers within the route's bounds. Anything else (a bad body, an
unusual content type, an over-long `Idempotency-Key`, a client gone mid-body) goes on to FastAPI
with the body already read replayed to it, so every validation error is FastAPI's own, in the
same shape, and cannot drift. Errors the handler raises (unknown session, version conflict, ...)
take the app's one mapping, `errors.service_error_response`.

It sits innermost among the middlewares (`app.py`), so request ids, metrics (by the declared
route's template), auth, body limits and deadlines apply as to any request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import models, sessions
from service.api.bounds import IDEMPOTENCY_KEY_MAX
from service.api.deps import Services
from service.api.errors import service_error_response
from service.api.middleware.limits import HOLD_KEY, OWNER_KEY
from service.api.schemas import FeedRequest, GenerateRequest, PredictRequest
from service.errors import ServiceError
from service.protocol.client import StreamHold

# (services, the path parameter, the validated body, Idempotency-Key, owner, stream slot) -> the
# response
Handler = Callable[
    [Services, str, Any, str | None, str | None, StreamHold | None], Awaitable[Response]
]


@dataclass(frozen=True)
class DirectRoute:
    template: str  # the declared route's path, one `{param}` between a prefix and a suffix
    body: type[BaseModel]
    handle: Handler
    idempotent: bool  # the route reads `Idempotency-Key`
    # served here only when this holds of the validated body (None: always); otherwise FastAPI
    # answers, e.g. a generation without `stream`, whose JSON goes through the response model
    only_if: Callable[[Any], bool] | None = None

    @property
    def prefix(self) -> str:
        return self.template.partition("{")[0]

    @property
    def suffix(self) -> str:
        return self.template.rpartition("}")[2]


async def _feed(
    s: Services, sid: str, body: Any, idem: str | None, owner: str | None, _: Any
) -> Response:
    return await sessions.feed_response(s, sid, body, idem, owner)


async def _predict(s: Services, model: str, body: Any, *_: Any) -> Response:
    return await models.predict_response(s, model, body)


async def _stream(
    s: Services, model: str, body: Any, _: Any, __: Any, hold: StreamHold | None
) -> Response:
    return await models.stream_response(s, model, body, hold)


def _streamed(body: GenerateRequest) -> bool:
    return body.stream


ROUTES = (
    DirectRoute("/v1/sessions/{session_id}/feed", FeedRequest, _feed, idempotent=True),
    DirectRoute("/v1/models/{model}/predict", PredictRequest, _predict, idempotent=False),
    # a generation's FastAPI part is per request, not per token, but a 200-token stream is a
    # request every 200 tokens per client: at 256 streams ~0.2 ms of worker CPU each
    DirectRoute(
        "/v1/models/{model}/generate", GenerateRequest, _stream, idempotent=False, only_if=_streamed
    ),
)


class _Bound:
    """A `DirectRoute` with its declared `APIRoute` (for `scope["route"]`: metrics, logs)."""

    def __init__(self, spec: DirectRoute, route: APIRoute) -> None:
        self.spec, self.route = spec, route
        self.prefix, self.suffix = spec.prefix, spec.suffix
        self.param = spec.template[len(self.prefix) + 1 : -len(self.suffix) - 1]

    def match(self, path: str) -> str | None:
        """The path parameter, as Starlette's `{param}` would take it (`[^/]+`), or None."""
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        value = path[len(self.prefix) : len(path) - len(self.suffix)]
        return value if value and "/" not in value else None


class DirectRoutes:
    """The ASGI layer (see the module doc); `routes` hold the declared routes of `ROUTES`."""

    def __init__(self, app: ASGIApp, routes: list[Any]) -> None:
        self.app = app
        declared = {
            r.path: r for r in routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())
        }
        self.bound = [_Bound(d, declared[d.template]) for d in ROUTES]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _plain(scope):
            path: str = scope["path"]
            for b in self.bound:
                param = b.match(path)
                if param is not None:
                    # the route FastAPI's router would pick for this exact path, set before the
                    # body is read: a timeout or failure from here on is counted under it too
                    scope["route"], scope["path_params"] = b.route, {b.param: param}
                    await self._serve(b, param, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, b: _Bound, param: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        messages: list[Message] = []
        body = await _read_body(receive, messages)
        parsed = _accept(b.spec, scope, body) if body is not None else None
        if parsed is None:  # not certain to be served as the route would: FastAPI answers
            await self.app(scope, _replay(messages, receive), send)
            return
        value, idem = parsed
        services: Services = scope["app"].state.services
        state = scope.get("state") or {}
        try:
            response = await b.spec.handle(
                services, param, value, idem, state.get(OWNER_KEY), state.get(HOLD_KEY)
            )
        except ServiceError as e:
            response = service_error_response(e)
        await response(scope, receive, send)


def _plain(scope: Scope) -> bool:
    """No reason to leave the request to FastAPI: no mount prefix (`root_path`), no
    `dependency_overrides` (the direct path reads the services itself), no FastAPI telemetry
    (its route span is set by the router)."""
    return (
        not scope.get("root_path")
        and not scope["app"].dependency_overrides
        and scope.get("fastapi.telemetry") is None
    )


async def _read_body(receive: Receive, messages: list[Message]) -> bytes | None:
    """The whole body (None if the client left, or the limits refused it, mid-way); every
    message read is kept in `messages` for a replay."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _accept(spec: DirectRoute, scope: Scope, body: bytes) -> tuple[Any, str | None] | None:
    """(the validated body, the Idempotency-Key) when FastAPI would accept the request with
    exactly these values; None when in any doubt."""
    content_type: bytes | None = None
    idem: str | None = None
    seen_idem = False
    for k, v in scope["headers"]:
        if k == b"content-type" and content_type is None:
            content_type = v
        elif k == b"idempotency-key" and spec.idempotent and not seen_idem:
            seen_idem, idem = True, bytes(v).decode("latin-1")
    if (
        content_type is None
        or content_type.split(b";", 1)[0].strip().lower() != b"application/json"
    ):
        return None
    if idem is not None and not 1 <= len(idem) <= IDEMPOTENCY_KEY_MAX:  # else FastAPI refuses
        return None
    try:
        data = json.loads(body)  # as Starlette's `Request.json()`
        value = spec.body.model_validate(data)
        if spec.only_if is not None and not spec.only_if(value):
            return None
        return value, idem
    # anything: FastAPI turns any failure to read a body into its own answer (a body nested
    # past Python's recursion limit is a RecursionError here and a 400 there)
    except Exception:
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
