from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.settings import Settings


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("RNNSERVE_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("RNNSERVE_PROVIDERS", '["CPUExecutionProvider"]')
    monkeypatch.setenv("RNNSERVE_STORE", "memory")
    s = Settings()
    assert s.models_dir == Path("/srv/models") and s.max_batch_size == 32
    assert s.providers == ["CPUExecutionProvider"]


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_every_api_field_is_documented() -> None:
    from pydantic import BaseModel

    import service.api.errors
    import service.api.health
    import service.api.schemas
    import service.api.ws

    mods = (service.api.schemas, service.api.ws, service.api.health, service.api.errors)
    for mod in mods:
        for name, cls in vars(mod).items():
            if (
                isinstance(cls, type)
                and issubclass(cls, BaseModel)
                and cls.__module__ == mod.__name__
            ):
                for field, info in cls.model_fields.items():
                    assert info.description, f"{mod.__name__}.{name}.{field}"


def test_the_redis_sentinels_and_the_wait_are_checked_at_start_up() -> None:
    s = Settings(redis_sentinels="10.0.0.1:26379, sentinel-b:26380")
    assert s.sentinel_addresses() == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert Settings().sentinel_addresses() == []
    for bad, why in (
        ({"redis_sentinels": "host-without-port"}, "host:port"),
        ({"redis_sentinels": "a:1", "redis_cluster": True}, "exclude each other"),
        ({"redis_wait_replicas": 1, "redis_wait_timeout_s": 2.0}, "must be below"),
    ):
        with pytest.raises(ValueError, match=why):
            Settings(**bad)


def test_idle_connections_outlive_the_clients_and_balancers_idle_timeouts() -> None:
    """The side that closes an idle kept-alive connection first must be the client (or the
    balancer before the server): a request sent on a connection the server is closing at that
    moment is lost. With uvicorn's 5 s, the same as httpx's default, a client with default
    settings got `ReadError` now and then under load (a CI failure, 1 run in 30 with a CPU hog
    here). nginx's `keepalive_timeout` and AWS ALB's idle timeout are 60 s."""
    idle = Settings().keep_alive_timeout_s
    assert idle > httpx.Limits().keepalive_expiry  # httpx's default client: 5 s
    assert idle > 60
