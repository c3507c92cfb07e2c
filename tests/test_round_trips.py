"""How many requests the hot paths cost: a small put is one, releases ride along."""

from __future__ import annotations

import gc
import os
import socket
import time

import numpy as np
import pytest

import vineyard
from vineyard.client import INLINE_LIMIT
from vineyard.errors import InvalidException, ObjectNotExistsException


@pytest.fixture
def requests_sent(client):
    """The ``type`` of every request the client's transport sends."""
    sent: list[str] = []
    original = client._t.request

    def spy(message, raw=None):
        sent.append(message["type"])
        return original(message, raw)

    client._t.request = spy
    yield sent
    client._t.request = original


def test_a_small_put_is_one_request(client, requests_sent):
    value = np.arange(100, dtype=np.float64)
    object_id = client.put(value)
    assert requests_sent == ["create_data"]
    np.testing.assert_array_equal(client.get(object_id), value)


def test_a_large_put_allocates_first(client, requests_sent):
    value = np.zeros(INLINE_LIMIT // 8 + 1)
    object_id = client.put(value)
    assert requests_sent == ["create_buffers", "create_data"]
    np.testing.assert_array_equal(client.get(object_id), value)


@pytest.mark.parametrize("persist", [False, True])
def test_inline_put_with_persist_and_name(client, persist):
    name = f"inline-{persist}"
    if persist:
        object_id = client.put(np.ones(4), persist=True, name=name)
        assert client.get_name(name) == object_id
        assert client.get_meta(object_id)["transient"] is False
    else:
        with pytest.warns(UserWarning, match="not persisted"):
            object_id = client.put(np.ones(4), name=name)
        with pytest.raises(ObjectNotExistsException):
            client.get_name(name)


def test_inline_put_over_rpc(rpc_client, client):
    object_id = rpc_client.put(np.arange(10, dtype=np.int32))
    np.testing.assert_array_equal(client.get(object_id), np.arange(10, dtype=np.int32))


def test_inline_blobs_of_a_refused_tree_are_given_back(client):
    before = client.status
    with pytest.raises(ObjectNotExistsException):
        client._t.request({
            "type": "create_data",
            "tree": {"typename": "t", "buffer_": {"__inline": 0}, "other_": {"id": 12345}},
            "inline": [b"x" * 1000],
        })
    after = client.status
    assert (after.memory_usage, after.blobs) == (before.memory_usage, before.blobs)


@pytest.mark.parametrize("ref", [{"__inline": 1}, {"__inline": "0"}, {"__inline": 0, "extra": 1}])
def test_a_bad_inline_reference_is_refused(client, ref):
    before = client.status
    with pytest.raises(InvalidException, match="inline"):
        client._t.request({"type": "create_data", "tree": {"typename": "t", "b": ref}, "inline": [b"abc"]})
    after = client.status
    assert (after.memory_usage, after.blobs) == (before.memory_usage, before.blobs)
    assert client.put(1) is not None  # the connection still works


def test_releases_ride_on_the_next_request(client, requests_sent):
    object_id = client.put(np.zeros(INLINE_LIMIT))  # big enough to live in its own blob
    array = client.get(object_id)
    blob = client.get_meta(object_id)["buffer_"].id
    assert client.ref_counts([blob]) == [1]
    del array
    gc.collect()
    requests_sent.clear()
    assert client.ref_counts([blob]) == [0]  # released by the same request that asks
    assert requests_sent == ["ref_counts"]


def test_the_empty_blob_is_never_inlined(client):
    object_id = client.put(np.zeros((3, 0)))
    assert client.get(object_id).shape == (3, 0)
    assert vineyard.ObjectID(client.get_meta(object_id)["buffer_"].id) == vineyard.ObjectID(1 << 63)


def test_an_inline_put_past_the_limit_fails_cleanly(make_daemon):
    daemon = make_daemon(size="64Ki", args=["--reuse-cache", "0"])
    with vineyard.connect(daemon.socket) as small:
        keep = small.put(np.arange(1000, dtype=np.int64))
        with pytest.raises(vineyard.NotEnoughMemoryException):
            small.put(np.zeros(7500))  # 60,000 bytes: inline-sized, but more than is left
        np.testing.assert_array_equal(small.get(keep), np.arange(1000, dtype=np.int64))
        assert small.status.memory_usage == 8000


@pytest.mark.parametrize("poll_us", [0, 100])
def test_busy_polling_daemon_and_client_answer_correctly(make_daemon, monkeypatch, poll_us):
    import vineyard.transport

    monkeypatch.setattr(vineyard.transport, "_BUSY_POLL", poll_us / 1e6)
    daemon = make_daemon(size="64Mi", args=["--busy-poll-us", str(poll_us)])
    with vineyard.connect(daemon.socket) as polled:
        for i in range(50):
            value = np.full(8, i)
            np.testing.assert_array_equal(polled.get(polled.put(value)), value)


class _LateReplies:
    """A socket whose reply is never there for a non-blocking read, and comes in a
    blocking one 50 ms later (a slow daemon)."""

    def __init__(self):
        self.polls = 0

    def recvmsg(self, size, ancsize, flags=0):
        if flags & socket.MSG_DONTWAIT:
            self.polls += 1
            raise BlockingIOError
        if self.delay:
            time.sleep(self.delay)
        return b"reply", [], 0, None

    delay = 0.05


class _PromptReplies(_LateReplies):
    """The same, but the blocking read returns at once (a daemon that answered)."""

    delay = 0.0


def test_a_client_polls_only_while_replies_come_quickly(client, monkeypatch):
    import vineyard.transport as transport_module

    monkeypatch.setattr(transport_module, "_BUSY_POLL", 1e-3)  # 1 ms windows, 50 ms late replies
    transport, late = client._t, _LateReplies()
    transport._last_wait = 0.0  # as after a quick reply
    assert transport._recv(late) == b"reply"
    assert late.polls > 1  # it polled before it slept
    assert transport._last_wait >= 0.05
    polls = late.polls
    transport._recv(late)
    assert late.polls - polls == 1  # a slow last reply: one look, then straight to sleep
    transport._recv(_PromptReplies())  # a prompt reply: polling pays again
    assert transport._last_wait < 0.05
    polls = late.polls
    assert transport._recv(late) == b"reply"
    assert late.polls - polls > 1  # polled again before it slept


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_quiet_daemon_does_not_keep_polling(make_daemon):
    daemon = make_daemon(size="64Mi", args=["--busy-poll-us", "5000"])  # long windows
    with vineyard.connect(daemon.socket) as client:
        for _ in range(20):
            client.exists(1)
        time.sleep(0.2)
        before = _cpu_seconds(daemon.pid)
        time.sleep(1.0)
        # a window is 5 ms and opens only after work: an idle second costs next to nothing
        assert _cpu_seconds(daemon.pid) - before < 0.1


def test_an_explicit_endpoint_wins_over_the_environment(store, monkeypatch):
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", store.socket)
    host, port = store.rpc_endpoint.rsplit(":", 1)
    with vineyard.connect(host, int(port)) as by_args, vineyard.connect(endpoint=store.rpc_endpoint) as by_kw:
        assert by_args.is_rpc
        assert by_kw.is_rpc
    with vineyard.connect() as from_env:
        assert from_env.is_ipc


def test_module_level_put_and_get_share_one_connection(store, monkeypatch, client):
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", store.socket)
    monkeypatch.setattr(vineyard, "_default", None)
    before = client.status.ipc_connections
    ids = [vineyard.put(np.full(3, i)) for i in range(5)]
    assert [int(vineyard.get(i)[0]) for i in ids] == list(range(5))
    assert client.status.ipc_connections == before + 1
    vineyard._default[1].close()
