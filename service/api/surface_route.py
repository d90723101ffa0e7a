"""A route class for an API surface that answers errors in a foreign protocol's own shape (the
OpenAI and v2 surfaces): its routes catch every failure themselves, so the app-wide handlers in
`service/api/errors.py` (the native shape) never see them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api.surfaces import foreign_status
from service.errors import ServiceError
from service.logging import get_logger


def client_status(e: ServiceError) -> int:
    """The status of `e` on a foreign surface (`service.api.surfaces.foreign_status`)."""
    return foreign_status(e)


class SurfaceRoute(APIRoute):
    """Subclasses name their surface and say how it answers each kind of failure; a server-side
    failure (5xx) is logged here, under `rnnserve.api.<surface>`."""

    surface: ClassVar[str]

    def on_service_error(self, e: ServiceError) -> Response:
        raise NotImplementedError

    def on_validation_error(self, e: RequestValidationError) -> Response:
        raise NotImplementedError

    def on_http_error(self, e: HTTPException) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        log = get_logger(f"api.{self.surface}")

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as e:
                if e.status >= 500:
                    log.error(
                        f"{self.surface} request failed",
                        extra={"code": e.code, "reason": e.message},
                    )
                return self.on_service_error(e)
            except RequestValidationError as e:
                return self.on_validation_error(e)
            except HTTPException as e:
                return self.on_http_error(e)

        return handle
