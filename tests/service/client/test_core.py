"""The client's shared, I/O-free core (`_ops`, `_retry`, `_sse`), driven by hand: the paths both
clients take but a live server does not easily produce."""

from __future__ import annotations

import httpx
import pytest

from service.client import Retry, SessionExists, StreamInterrupted, TransportError
from service.client._core import Call
from service.client._ops import create_session
from service.client._retry import Attempts
from service.client._sse import StreamState

INFO = {"session_id": "s1", "model": "m", "version": 0, "expires_at": 1.0, "tokens_seen": 0}
EXISTS = SessionExists("taken", status=409)


def test_create_session_finds_its_own_lost_first_attempt() -> None:
    op = create_session("m", None, None, None)
    create = next(op)
    assert create.method == "POST" and create.json["session_id"]
    read = op.throw(EXISTS)  # our own random id is taken: read the session instead
    assert read == Call("GET", f"/v1/sessions/{create.json['session_id']}")
    with pytest.raises(StopIteration) as done:
        op.send(httpx.Response(200, json=INFO))
    assert done.value.value.session_id == "s1"


def test_create_session_with_a_chosen_id_raises_when_taken() -> None:
    op = create_session("m", None, "mine", None)
    assert next(op).json["session_id"] == "mine"
    with pytest.raises(SessionExists):
        op.throw(EXISTS)


def test_stream_state_drops_a_half_read_message_on_restart() -> None:
    st = StreamState()
    assert list(st.feed("event: token")) == list(st.feed('data: {"text": "lost"}')) == []
    st.restart()  # the connection broke mid-message; the retry's response starts clean
    lines = ["event: token", 'data: {"text": "a"}', ""]
    done = ["event: done", 'data: {"text": "a", "finish_reason": "length", "seed": 1, "usage": {}}']
    assert [t for line in [*lines, *done, ""] for t in st.feed(line)] == ["a"]
    assert st.end().text == "a" and st.yielded == 1


def test_stream_state_end_without_result_is_interrupted() -> None:
    with pytest.raises(StreamInterrupted):
        StreamState().end()


def test_attempts_never_resend_a_stream_that_handed_out_tokens() -> None:
    lost = httpx.ReadError("reset", request=httpx.Request("POST", "http://x/"))
    attempts = Attempts(Retry(attempts=3, backoff_s=0.01), Call("POST", "/g"))
    assert attempts.after_exception(lost) > 0  # attempt 1 of 3, nothing handed out: resend
    with pytest.raises(StreamInterrupted) as e:
        attempts.after_exception(lost, streamed=True)
    assert e.value.__cause__ is lost
    assert attempts.after_exception(lost) > 0  # attempt 2 of 3
    with pytest.raises(TransportError):  # attempt 3 of 3: give up
        attempts.after_exception(lost)
