"""API keys reload without a restart (`service.keys`): a changed keys file is re-read within
`api_keys_reload_s`, or at once on SIGHUP; new keys work, revoked keys stop working, and a
broken, empty or missing file keeps the previous keys (an error is logged, nothing crashes)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import keys as keys_module
from service.keys import Keys, key_hash
from tests.hardening.conftest import auth
from tests.service.conftest import LM, ClientFactory

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
CAROL = "carol-key-0123456789abcdef"


def line(name: str, key: str) -> str:
    return f"{name} sha256:{key_hash(key).hex()}\n"


def replace(path: Path, text: str) -> None:
    """Write the keys file as an operator should: a temporary file, then an atomic rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def status(c: httpx.AsyncClient, key: str) -> int:
    return (await c.get("/v1/models", headers=auth(key))).status_code


async def settle(interval: float = 0.05) -> None:
    await asyncio.sleep(interval * 3)  # the next request after the interval checks the file


async def test_added_key_works_and_revoked_key_stops(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    f = tmp_path / "keys"
    f.write_text(line("alice", ALICE) + line("bob", BOB))
    async with make_client(api_keys_file=f, api_keys_reload_s=0.05) as c:
        assert (await status(c, ALICE), await status(c, BOB), await status(c, CAROL)) == (
            200,
            200,
            401,
        )
        sid = (await c.post("/v1/sessions", json={"model": LM}, headers=auth(BOB))).json()
        replace(f, "# bob revoked, carol added\n" + line("alice", ALICE) + line("carol", CAROL))
        await settle()
        assert await status(c, CAROL) == 200  # the request that notices uses the new keys
        assert await status(c, BOB) == 401
        r = await c.get(f"/v1/sessions/{sid['session_id']}", headers=auth(BOB))
        assert r.status_code == 401  # a revoked key reaches nothing, its sessions included
        assert await status(c, ALICE) == 200
        # an edit in place (same inode) is seen too: mtime and size change
        f.write_text(line("alice", ALICE))
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
        await settle()
        assert (await status(c, ALICE), await status(c, CAROL)) == (200, 401)


@pytest.mark.parametrize(
    "broken",
    [
        "alice sha256:not-a-hash\n",  # does not parse
        "just garbage\n",
        "",  # holds no key: a reload never locks everyone out
        b"\xff\xfe binary\n",  # not UTF-8
        None,  # the file is gone
    ],
)
async def test_a_broken_file_keeps_the_previous_keys(
    make_client: ClientFactory, tmp_path: Path, caplog: Any, broken: str | bytes | None
) -> None:
    caplog.set_level(logging.INFO, logger="rnnserve")
    f = tmp_path / "keys"
    f.write_text(line("alice", ALICE))
    async with make_client(api_keys_file=f, api_keys_reload_s=0.05) as c:
        assert await status(c, ALICE) == 200
        if broken is None:
            f.unlink()
        elif isinstance(broken, bytes):
            f.write_bytes(broken)
        else:
            replace(f, broken)
        await settle()
        for _ in range(3):  # the previous keys stay in force, the server keeps serving
            assert await status(c, ALICE) == 200
            assert await status(c, BOB) == 401
            await settle()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # once, not at every check
        assert "previous keys stay in force" in errors[0].getMessage()
        # fixed: the new file is taken
        replace(f, line("bob", BOB))
        await settle()
        assert (await status(c, BOB), await status(c, ALICE)) == (200, 401)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert ALICE not in text and BOB not in text  # keys are never logged


async def test_sighup_reloads_at_once(make_client: ClientFactory, tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(line("alice", ALICE))
    before = signal.getsignal(signal.SIGHUP)
    async with make_client(api_keys_file=f, api_keys_reload_s=0) as c:  # no change checks
        handler = signal.getsignal(signal.SIGHUP)
        # guard: without the app's handler, SIGHUP would end this test process
        assert handler not in (signal.SIG_DFL, signal.SIG_IGN, None)
        replace(f, line("bob", BOB))
        await asyncio.sleep(0.1)
        assert (await status(c, ALICE), await status(c, BOB)) == (200, 401)  # not yet
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)  # the loop runs the handler
        assert (await status(c, ALICE), await status(c, BOB)) == (401, 200)
        replace(f, "broken\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
        assert await status(c, BOB) == 200
    assert signal.getsignal(signal.SIGHUP) == before  # restored when the app stops


async def test_env_keys_stay_and_an_empty_file_keeps_checking_on(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    f = tmp_path / "keys"
    f.write_text("# no tenant yet\n")
    async with make_client(api_keys_file=f, api_keys_reload_s=0.05) as c:
        assert await status(c, ALICE) == 401  # a configured file means keys are on
        assert (await c.get("/v1/models")).status_code == 401
        replace(f, line("alice", ALICE))
        await settle()
        assert await status(c, ALICE) == 200
    async with make_client(api_keys=f"bob:{BOB}", api_keys_file=f, api_keys_reload_s=0.05) as c:
        replace(f, line("carol", CAROL))
        await settle()
        assert (await status(c, BOB), await status(c, CAROL), await status(c, ALICE)) == (
            200,
            200,
            401,
        )


def test_the_file_is_checked_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path costs a clock read; a stat happens at most once per interval."""
    f = tmp_path / "keys"
    f.write_text(line("alice", ALICE))
    now = [100.0]
    keys = Keys(path=f, check_every_s=5.0, clock=lambda: now[0])
    stats = 0
    real = keys_module._signature

    def counting(path: Path) -> tuple[int, int, int, int]:
        nonlocal stats
        stats += 1
        return real(path)

    monkeypatch.setattr(keys_module, "_signature", counting)
    replace(f, line("bob", BOB))
    for _ in range(1000):
        assert keys.owner(ALICE) == "alice" and keys.owner(BOB) is None
    assert stats == 0
    now[0] += 5.0
    assert keys.owner(BOB) == "bob" and keys.owner(ALICE) is None
    for _ in range(1000):
        keys.owner(BOB)
    assert stats == 1
    assert keys.reload() is True and stats == 2  # what SIGHUP calls


def test_a_broken_file_at_start_up_is_fatal(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("alice nothash\n")
    with pytest.raises(ValueError, match="line 1"):
        Keys(path=f)
    with pytest.raises(FileNotFoundError):
        Keys(path=tmp_path / "missing")
