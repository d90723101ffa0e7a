"""Dependencies (overridable in tests with `app.dependency_overrides`).

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, and
two thread hand-offs per request cost ~20 % of a session step's CPU (py-spy, bench/ step
workload); these do no blocking work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from service.api.middleware.auth import owner_of
from service.api.middleware.limits import HOLD_KEY
from service.api.pacing import Pacer
from service.metrics import Metrics
from service.protocol.client import EngineClient, StreamHold
from service.settings import Settings


@dataclass
class Services:
    settings: Settings
    client: EngineClient  # the engine, through its one interface (service/protocol/client.py)
    metrics: Metrics
    pacer: Pacer = field(init=False)  # this process's token streams (service/api/pacing.py)

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.settings.stream_writes_per_s)


async def get_services(conn: HTTPConnection) -> Services:
    services: Services = conn.app.state.services
    return services


async def get_owner(conn: HTTPConnection) -> str | None:
    """The caller's key scope: the API key's owner name (`service.api.middleware.auth`); None with keys
    off (every caller is the anonymous owner)."""
    return owner_of(conn)


def hold_of(conn: HTTPConnection) -> StreamHold | None:
    """The request's stream slot (`middleware/limits.py` takes one for a stream route); a
    generation is opened under it (`EngineClient.open`)."""
    hold: StreamHold | None = (conn.scope.get("state") or {}).get(HOLD_KEY)
    return hold


async def get_hold(conn: HTTPConnection) -> StreamHold | None:
    return hold_of(conn)
