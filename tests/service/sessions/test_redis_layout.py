"""Where the Redis store keeps a session's keys: byte-identical to the layout deployments already
hold on one primary, and one slot per session (its live and owner sets included) on a cluster."""

from __future__ import annotations

from redis.crc import key_slot

from service.sessions.redis_layout import CLUSTER_BUCKETS, Layout


def test_one_primary_keeps_the_layout_existing_data_is_in() -> None:
    one = Layout("rnnserve:", None)
    assert one.key("alice/s1", "s") == "rnnserve:{alice/s1}:s"
    assert (one.live("x"), one.own("x", "alice")) == ("rnnserve:live", "rnnserve:own:alice")
    assert one.around("x") == ("rnnserve:{", "}:")  # the create script's eviction keys
    assert one.lives() == ["rnnserve:live"] and one.owns("alice") == ["rnnserve:own:alice"]


def test_on_a_cluster_every_key_of_a_session_shares_one_slot() -> None:
    c = Layout("rnnserve:", CLUSTER_BUCKETS)
    for sid in ("s1", "alice/s2", "{odd}", "x" * 200):
        head, tail = c.around(sid)
        keys = [c.key(sid, k) for k in ("s", "g", "i", "lock", "q", "w")]
        keys += [c.live(sid), c.own(sid, "alice"), head + "other" + tail + "s"]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        assert c.around_live(c.live(sid)) == (head, tail)
    assert len(c.lives()) == CLUSTER_BUCKETS == len(set(c.lives()))
    slots = {key_slot(k.encode()) for k in c.lives()}
    assert len(slots) > CLUSTER_BUCKETS * 0.9  # the buckets spread over slots (and shards)
