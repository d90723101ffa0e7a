"""Dependencies (overridable in tests with `app.dependency_overrides`)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from service.engine.engine import Engine
from service.engine.session_ops import SessionService
from service.engine.sessions import SessionStore
from service.metrics import Metrics
from service.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: SessionService
    store: SessionStore
    metrics: Metrics


def get_services(conn: HTTPConnection) -> Services:
    services: Services = conn.app.state.services
    return services


def get_owner(conn: HTTPConnection) -> str | None:
    """The caller's key scope. No API keys yet: every caller is the anonymous owner."""
    return None
