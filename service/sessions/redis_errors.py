"""What a Redis failure is to a caller of the session store: `StoreUnavailable` (503
`store_unavailable`, Retry-After), within one deadline per store call, for every way Redis can
be unreachable, hung, loading, read-only, out of memory or mid-failover; anything else (a bug in
a script) is raised as it is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis import exceptions as rx

from service.errors import StoreUnavailable

# Server replies that mean "not now" rather than "bug": answered as 503 like a lost connection.
_TRANSIENT = (
    "OOM",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "NOREPLICAS",
    "MISCONF",
    "CLUSTERDOWN",
)


@contextlib.asynccontextmanager
async def store_errors(deadline_s: float) -> AsyncIterator[None]:
    """One deadline for the whole call (connect, send, read, redis-py's retry together; a
    hung Redis keeps its sockets open, so the socket timeouts alone add up), and Redis's
    errors as `StoreUnavailable`. A call cut off by the deadline has its connection dropped
    by redis-py, so no later call reads its late reply."""
    try:
        async with asyncio.timeout(deadline_s):
            yield
    except TimeoutError:
        raise StoreUnavailable(f"session store did not answer within {deadline_s:g} s") from None
    except (rx.ConnectionError, rx.TimeoutError, rx.RedisClusterException) as e:
        # (a cluster none of whose nodes answer, or a slot no node serves yet)
        raise StoreUnavailable(f"session store unreachable ({type(e).__name__})") from None
    except (
        rx.OutOfMemoryError,
        rx.ReadOnlyError,
        rx.TryAgainError,
        rx.MasterDownError,
        rx.ClusterDownError,
    ) as e:
        raise StoreUnavailable(f"session store not accepting writes ({e})") from None
    except rx.ResponseError as e:
        words = str(e).split()
        if (words and words[0].upper() in _TRANSIENT) or "command not allowed" in str(e):
            raise StoreUnavailable(f"session store not accepting writes ({e})") from None
        raise
