"""API keys: parsing, the constant-time key ring, and the keys in force (reloadable file).

Keys come from `RNNSERVE_API_KEYS` (plain, comma-separated, `key` or `name:key`; fixed for the
life of the process) and/or `RNNSERVE_API_KEYS_FILE` (hashed: `name sha256:<hex>` per line),
which is re-read without a restart:

* **on change**: a request checks the file's (mtime, size, inode) at most once every
  `api_keys_reload_s` seconds (one clock read per request otherwise) and re-reads it when they
  changed; the request that notices already uses the new keys;
* **on SIGHUP** (`reload_on_sighup`, while the app runs): re-read at once.

A file that cannot be read or parsed, or that holds no key, is refused: the previous keys stay in
force, an error is logged (never a key), and it is tried again when it changes. So a reload never
locks everyone out and never crashes the server; at start-up the same faults are fatal (there
are no previous keys to keep). Write the file atomically (a temporary file, then rename, as a
Kubernetes Secret volume does), so that no check ever sees it half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from service.logging import get_logger
from service.settings import Settings
from service.signals import on_signal

log = get_logger("keys")

Entry = tuple[bytes, str]  # (sha256 digest of the key, owner name)

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def default_name(key: str) -> str:
    """The owner name of a key given without one: a short, non-reversible tag."""
    return "key-" + hashlib.sha256(b"rnnserve-owner:" + key.encode()).hexdigest()[:16]


def check_key(name: str, key: str) -> None:
    if not _NAME.match(name):
        raise ValueError("API key names are 1-64 of [A-Za-z0-9._-]")
    if len(key) < 16:
        raise ValueError(f"API key for {name!r} is shorter than 16 characters")


def parse_plain(items: Iterable[str]) -> list[Entry]:
    out = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        name, sep, key = item.partition(":")
        if not sep:
            name, key = default_name(item), item
        check_key(name, key)
        out.append((key_hash(key), name))
    return out


def parse_file(lines: Iterable[str]) -> list[Entry]:
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("sha256:"):
            raise ValueError(f"api keys file line {n}: expected `name sha256:<hex>`")
        name, hexd = parts[0], parts[1].removeprefix("sha256:").lower()
        if not _NAME.match(name) or not _HEX.match(hexd):
            raise ValueError(f"api keys file line {n}: bad name or hash")
        out.append((bytes.fromhex(hexd), name))
    return out


@dataclass(frozen=True)
class KeyRing:
    """(sha256 digest, owner name) pairs: one immutable snapshot of the keys."""

    entries: tuple[Entry, ...] = ()

    def owner(self, presented: str) -> str | None:
        """The owner of a presented key, or None. Compares against every entry."""
        digest = key_hash(presented)
        found: str | None = None
        for stored, name in self.entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = name
        return found


def _signature(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()  # follows symlinks: a swapped Secret volume shows as a new inode
    return st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev


class Keys:
    """The keys in force: the plain ones plus the keys file's, re-read when it changes.

    `enabled` (any key or a keys file configured) is fixed at start-up: emptying the file never
    turns checking off.
    """

    def __init__(
        self,
        plain: Sequence[Entry] = (),
        path: Path | None = None,
        check_every_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.enabled = bool(plain) or path is not None
        self.check_every_s = check_every_s  # 0: only `reload()` (SIGHUP) re-reads the file
        self._plain = tuple(plain)
        self._file: tuple[Entry, ...] = ()
        self._sig: tuple[int, int, int, int] | None = None
        self._clock = clock
        if path is not None:  # at start-up a missing or broken file is fatal
            self._sig = _signature(path)
            self._file = tuple(parse_file(path.read_text().splitlines()))
            if not self._file:
                log.warning("the api keys file holds no key", extra={"path": str(path)})
        self.ring = KeyRing(self._plain + self._file)
        self._next_check = clock() + check_every_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        plain: list[Entry] = []
        keys: SecretStr | str | None = settings.api_keys
        if keys is not None:
            raw = keys.get_secret_value() if isinstance(keys, SecretStr) else keys
            plain = parse_plain(raw.split(","))
        return cls(plain, settings.api_keys_file, settings.api_keys_reload_s)

    def owner(self, presented: str) -> str | None:
        """The owner of a presented key under the keys in force (checking the file first when
        its interval has passed), or None."""
        if self.path is not None and self.check_every_s > 0:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self.check_every_s
                self._check(self.path)
        return self.ring.owner(presented)

    def reload(self) -> bool:
        """Re-read the keys file now (SIGHUP); True when its keys are in force."""
        if self.path is None:
            return False
        try:
            sig = _signature(self.path)
        except OSError as e:
            self._refuse(e)
            return False
        return self._load(self.path, sig)

    def _check(self, path: Path) -> None:
        try:
            sig = _signature(path)
        except OSError as e:
            if self._sig is not None:  # log a vanished file once, not at every check
                self._sig = None
                self._refuse(e)
            return
        if sig != self._sig:
            self._load(path, sig)

    def _load(self, path: Path, sig: tuple[int, int, int, int]) -> bool:
        self._sig = sig  # taken before reading: a write after it shows as another change
        try:
            entries = tuple(parse_file(path.read_text().splitlines()))
            if not entries:
                raise ValueError("the file holds no key")
        except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
            self._refuse(e)
            return False
        old, new = set(self._file), set(entries)
        self._file = entries
        self.ring = KeyRing(self._plain + entries)
        log.info(
            "api keys reloaded",
            extra={"keys": len(entries), "added": len(new - old), "removed": len(old - new)},
        )
        return True

    def _refuse(self, err: Exception) -> None:
        log.error(
            "api keys file not reloaded; the previous keys stay in force",
            extra={"path": str(self.path), "error": f"{type(err).__name__}: {err}"},
        )


@contextlib.contextmanager
def reload_on_sighup(keys: Keys) -> Iterator[None]:
    """While in the block, SIGHUP re-reads the keys file (main thread on Unix only; elsewhere
    the change check alone applies). Must run inside the event loop."""
    sighup = getattr(signal, "SIGHUP", None)
    if keys.path is None or sighup is None:
        yield
        return
    with on_signal(sighup, keys.reload):
        yield
