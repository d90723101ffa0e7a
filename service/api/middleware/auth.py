"""Optional API keys: `Authorization: Bearer <key>` on every surface (HTTP and WebSocket).

Keys come from `RNNSERVE_API_KEYS` and/or `RNNSERVE_API_KEYS_FILE`; the file is re-read when it
changes and on SIGHUP (`service.keys`). No key configured = auth off: every caller is the
anonymous owner (`None`). With keys, each request's owner is the key's name (keys sharing a
name share sessions: that is how a key is rotated); sessions belong to their owner and another
owner gets the same 404 as for a session that never existed.

A presented key is hashed (sha256) and compared with EVERY stored hash with
`hmac.compare_digest`, so the time taken does not depend on which key (if any) matched.
Keys are never logged. `python -m service.security KEY` prints a file line for a key.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.middleware.limits import OWNER_KEY, send_error
from service.api.surfaces import open_paths
from service.errors import ServiceError
from service.keys import Keys
from service.settings import Settings


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="rnnserve"'})


def bearer(scope: Scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            scheme, _, token = bytes(v).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class AuthMiddleware:
    """Checks the bearer key of every HTTP request and WebSocket handshake (pure ASGI)."""

    def __init__(self, app: ASGIApp, keys: Keys, settings: Settings) -> None:
        self.app = app
        self.keys = keys
        self.exact, self.prefixes = open_paths(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        token = bearer(scope)
        owner = self.keys.owner(token) if token is not None else None
        if owner is None and not (path in self.exact or path.startswith(self.prefixes)):
            why = "a valid API key is required" if token is None else "the API key is not valid"
            err = Unauthorized(f"{why} (Authorization: Bearer <key>)")
            if scope["type"] == "websocket":  # refuse the handshake (HTTP 403 to the client)
                await send({"type": "websocket.close", "code": 1008, "reason": err.message})
                return
            await send_error(scope, send, err)
            return
        scope.setdefault("state", {})[OWNER_KEY] = owner
        await self.app(scope, receive, send)


def owner_of(conn: HTTPConnection) -> str | None:
    """The caller's owner name (None with auth off)."""
    state = conn.scope.get("state") or {}
    owner: str | None = state.get(OWNER_KEY)
    return owner
