"""Where the Redis session store keeps a session's keys: on one primary, or spread over a Redis
Cluster's slots (`Layout`)."""

from __future__ import annotations

import zlib

CLUSTER_BUCKETS = 128  # live and owner sets per cluster (each in its own slot)


class Layout:
    """Where a session's keys live.

    One primary: `{p}{<id>}:<kind>`, one `{p}live` set and one `{p}own:<owner>` set per owner.
    A cluster: a script may only name keys of one slot, and a single live set would be one hot
    slot that every request touches. So sessions are spread over `buckets` buckets (crc32 of the
    id), each with its own live and owner sets, and a session's keys carry its bucket's hash tag
    (`{p}{b<k>}<id>:<kind>`, `{p}{b<k>}live`, `{p}{b<k>}own:<owner>`): every script still runs on
    one slot, and the buckets spread over the shards as slots do."""

    def __init__(self, prefix: str, buckets: int | None) -> None:
        self.prefix, self.buckets = prefix, buckets

    def _tag(self, session_id: str) -> str:
        assert self.buckets is not None
        return f"{self.prefix}{{b{zlib.crc32(session_id.encode()) % self.buckets}}}"

    def key(self, session_id: str, kind: str) -> str:
        if self.buckets is None:
            return f"{self.prefix}{{{session_id}}}:{kind}"
        return f"{self._tag(session_id)}{session_id}:{kind}"

    def live(self, session_id: str) -> str:
        return self.prefix + "live" if self.buckets is None else self._tag(session_id) + "live"

    def own(self, session_id: str, owner: str) -> str:
        if self.buckets is None:
            return f"{self.prefix}own:{owner}"
        return f"{self._tag(session_id)}own:{owner}"

    def around(self, session_id: str) -> tuple[str, str]:
        """(head, tail): another session `c` of the same live set keeps its keys at
        `head + c + tail + kind` (the create script evicts by it)."""
        if self.buckets is None:
            return self.prefix + "{", "}:"
        return self._tag(session_id), ":"

    def around_live(self, live: str) -> tuple[str, str]:
        """`around`, for the sessions of the live set `live`."""
        if self.buckets is None:
            return self.prefix + "{", "}:"
        return live.removesuffix("live"), ":"

    def lives(self) -> list[str]:
        """Every live set."""
        if self.buckets is None:
            return [self.prefix + "live"]
        return [f"{self.prefix}{{b{b}}}live" for b in range(self.buckets)]

    def owns(self, owner: str) -> list[str]:
        """Every set of one owner's sessions."""
        if self.buckets is None:
            return [f"{self.prefix}own:{owner}"]
        return [f"{self.prefix}{{b{b}}}own:{owner}" for b in range(self.buckets)]
