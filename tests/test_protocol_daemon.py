"""The daemon against garbage: raw sockets send what no client would, and the daemon answers
with an error or drops that one connection, and keeps serving everybody else."""

from __future__ import annotations

import socket
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import wire_values

import vineyard
from vineyard.errors import RemoteProtocolError, StatusCode
from vineyard.protocol import (
    MAX_FRAME,
    NEED_DATA,
    REQUESTS,
    FrameDecoder,
    encode,
    validate_request,
)


def frame(body: bytes) -> bytes:
    return struct.pack("<Q", len(body)) + body


# -- against a live daemon -----------------------------------------------------------------


class Raw:
    """A raw UNIX-socket connection speaking frames by hand."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.decoder = FrameDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict | None:
        """The next reply, or None if the daemon closed the connection."""
        for _ in range(10_000):
            message = self.decoder.next_message()
            if message is not NEED_DATA:
                assert isinstance(message, dict)
                return message
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.decoder.feed(data)
        raise AssertionError("no reply")

    def skip_raw(self, n: int) -> None:
        """Read and drop ``n`` raw bytes that follow a reply (blob bytes of a download)."""
        n -= len(self.decoder.take_raw(n))
        while n > 0:
            data = self.sock.recv(min(n, 65536))
            assert data, "the daemon closed the connection inside a payload"
            n -= len(data)

    def call(self, message: dict) -> dict | None:
        self.send(encode(message))
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def victim(make_daemon_module):
    return make_daemon_module(size="64Mi")


def _still_serving(path: str) -> None:
    with vineyard.connect(path) as client:
        object_id = client.put(np.arange(1000, dtype=np.int64))
        assert client.get(object_id).sum() == 499500
        client.delete(object_id)


def _registered(path: str) -> Raw:
    raw = Raw(path)
    assert raw.call({"type": "register", "store_type": "ipc"})["code"] == 0  # type: ignore[index]
    return raw


GARBAGE = [
    pytest.param(b"\xde\xad\xbe\xef" * 64, id="random-bytes"),
    pytest.param(b"\x05\x00\x00\x00\x00\x00\x00\x00\x81", id="truncated-frame"),
    pytest.param((1 << 62).to_bytes(8, "little") + b"\x80", id="oversized-length"),
    pytest.param(((MAX_FRAME + 1)).to_bytes(8, "little"), id="just-over-the-limit"),
    pytest.param(frame(b"\x91" * 100_000 + b"\x80"), id="deep-msgpack-array"),
    pytest.param(frame(b"\x81\xa1k" * 2000 + b"\x80"), id="deep-msgpack-map"),
    pytest.param(frame(b"\xc1"), id="reserved-byte"),
    pytest.param(frame(msgpack.packb([1, 2, 3])), id="array-body"),
    pytest.param(frame(b"\xd6\xff\x00\x00\x00\x01"), id="timestamp-ext"),
]


@pytest.mark.parametrize("payload", GARBAGE)
def test_daemon_survives_garbage(victim, payload: bytes) -> None:
    raw = _registered(victim.socket)
    try:
        raw.send(payload)
        if payload.startswith(b"\x05\x00"):
            raw.sock.shutdown(socket.SHUT_WR)  # a truncated frame: the peer goes away mid-frame
        reply = raw.reply()
        if reply is not None:
            assert reply["code"] != 0
            assert isinstance(reply["message"], str)
    finally:
        raw.close()
    _still_serving(victim.socket)
    assert victim.proc.poll() is None


WRONG = [
    ({"type": "no_such_kind"}, StatusCode.PROTOCOL_ERROR),
    ({"type": 7}, StatusCode.PROTOCOL_ERROR),
    ({"nothing": "here"}, StatusCode.PROTOCOL_ERROR),
    ({"type": "seal", "ids": "o1"}, StatusCode.PROTOCOL_ERROR),
    ({"type": "get_data", "ids": [-5]}, StatusCode.PROTOCOL_ERROR),
    ({"type": "create_buffers", "sizes": [1.5]}, StatusCode.PROTOCOL_ERROR),
    ({"type": "get_data", "ids": [0x0123456789]}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "get_buffers", "ids": [(1 << 63) | 77]}, StatusCode.OK),  # missing blobs come back as None
    ({"type": "persist", "id": 0x0123456789}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "put_name", "id": 0x0123456789, "name": "x"}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "seal", "ids": [(1 << 63) | 77]}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "abort_buffer", "id": (1 << 63) | 77}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "shallow_copy", "id": 0x0123456789}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "label", "id": 0x0123456789, "labels": {"a": "b"}}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "get_name", "name": "never-put"}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "create_data", "tree": {"a": 1}}, StatusCode.META_TREE_INVALID),
    ({"type": "create_data", "tree": {"typename": "t", "m": {"id": 0x0123456789}}}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "create_data", "tree": {"typename": "t", "m": {"id": "o1"}}}, StatusCode.META_TREE_INVALID),
    ({"type": "create_data", "tree": {"typename": "t", "m": {"id": 1.5}}}, StatusCode.META_TREE_INVALID),
    ({"type": "create_data", "tree": {"typename": "t", "x": [1]}}, StatusCode.INVALID),
    ({"type": "create_data", "tree": {"typename": "t", "x": b"raw"}}, StatusCode.INVALID),
    ({"type": "create_data", "tree": {"typename": "vineyard::Blob"}}, StatusCode.ASSERTION_FAILED),
    ({"type": "create_buffers", "sizes": [1 << 62]}, StatusCode.NOT_ENOUGH_MEMORY),
    ({"type": "shrink_buffer", "id": (1 << 63) | 77, "size": 1}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "label", "id": 0x0123456789, "labels": {"a": [[[[1]]]]}}, None),
    ({"type": "shallow_copy", "id": 0x0123456789, "extra": {"a": b"x"}}, None),
    ({"type": "delete", "ids": [0x0123456789, (1 << 63) | 77]}, StatusCode.OK),
    ({"type": "list_data", "pattern": "[", "regex": True}, StatusCode.OK),
    ({"type": "list_data", "limit": -3}, StatusCode.OK),
    ({"type": "get_name", "name": "never", "wait": True, "timeout": -1}, StatusCode.OBJECT_NOT_EXISTS),
    ({"type": "get_name", "name": "never", "wait": True, "timeout": float("inf")}, StatusCode.PROTOCOL_ERROR),
    ({"type": "get_name", "name": "never", "wait": True, "timeout": float("nan")}, StatusCode.PROTOCOL_ERROR),
    ({"type": "get_name", "name": "never", "wait": True, "timeout": 1e300}, StatusCode.PROTOCOL_ERROR),
    ({"type": "delete_by_labels", "labels": {}, "older_than": float("nan")}, StatusCode.PROTOCOL_ERROR),
    ({"type": "evict", "ids": [1]}, StatusCode.INVALID),
]


@pytest.mark.parametrize(("message", "code"), WRONG, ids=[f"{m.get('type')}-{i}" for i, (m, _) in enumerate(WRONG)])
def test_daemon_answers_wrong_requests_with_errors(victim, message: dict, code: StatusCode | None) -> None:
    raw = _registered(victim.socket)
    try:
        reply = raw.call(message)
        assert reply is not None, "the daemon dropped a well-framed request"
        if code is None:
            assert reply["code"] != StatusCode.UNKNOWN_ERROR, reply  # not an internal error
        else:
            assert reply["code"] == code, reply
        if reply["code"]:
            assert reply["message"]
            assert "internal error" not in reply["message"]
        # the same connection still works after an error reply
        assert raw.call({"type": "ping"}) == {"code": 0}
    finally:
        raw.close()
    _still_serving(victim.socket)


def test_requests_before_register_are_refused(victim) -> None:
    raw = Raw(victim.socket)
    try:
        reply = raw.call({"type": "status"})
        assert reply is not None
        assert reply["code"] == StatusCode.INVALID
        assert "register" in reply["message"]
    finally:
        raw.close()


def test_ipc_register_over_tcp_is_refused(store) -> None:
    host, port = store.rpc_endpoint.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.sendall(encode({"type": "register", "store_type": "ipc"}))
        decoder = FrameDecoder()
        for _ in range(100):
            message = decoder.next_message()
            if message is not NEED_DATA:
                break
            decoder.feed(sock.recv(4096))
        assert message["code"] == StatusCode.INVALID
    finally:
        sock.close()


def test_half_sent_frame_then_disconnect_leaves_the_daemon_serving(victim) -> None:
    raw = _registered(victim.socket)
    raw.send(encode({"type": "create_buffers", "sizes": [1 << 20]})[:-1])
    raw.close()
    _still_serving(victim.socket)


def test_many_garbage_clients_then_a_good_one(victim) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        raw = Raw(victim.socket)
        try:
            raw.send(rng.bytes(int(rng.integers(1, 300))))
        finally:
            raw.close()
    _still_serving(victim.socket)
    assert victim.proc.poll() is None


@pytest.mark.parametrize(
    "message",
    [
        {"type": "label", "labels": {"a": [[[[1]]]]}},
        {"type": "label", "labels": {"a": {"b": 1}}},
        {"type": "label", "labels": {"a": b"\xff\xfe"}},
        {"type": "shallow_copy", "extra": {"a": b"\xff"}},
        {"type": "shallow_copy", "extra": {"a": {"b": 1}}},
        {"type": "shallow_copy", "extra": {"id": 5}},
        {"type": "shallow_copy", "extra": {"typename": 5}},
    ],
    ids=lambda m: f"{m['type']}-{next(iter((m.get('labels') or m.get('extra')).values()))!r}",
)
def test_odd_values_never_poison_an_object(victim, message: dict) -> None:
    """Whatever a request smuggles into metadata, the object stays readable by everyone."""
    with vineyard.connect(victim.socket) as client:
        object_id = client.put(np.arange(3))
        raw = _registered(victim.socket)
        try:
            reply = raw.call({**message, "id": int(object_id)})
            assert reply is not None
            assert "internal error" not in reply.get("message", "")
            for target in {int(object_id), reply.get("id", int(object_id))}:
                got = raw.call({"type": "get_data", "ids": [target], "blobs": False})
                assert got is not None
                assert got["code"] == 0, got
                meta = client.get_meta(target)
                repr(meta)
                assert list(client.get(target)) == [0, 1, 2]
        finally:
            raw.close()


_scalar_values = st.none() | st.booleans() | st.integers(-5, 1 << 40) | st.floats(0, 2) | st.text(max_size=8)


def _field_strategy(name: str, ids: list[int]) -> st.SearchStrategy[object]:
    """Mostly well-typed values (so requests reach the handlers), sometimes anything."""
    some_id = st.sampled_from(ids) | st.integers(0, (1 << 64) - 1)
    typed = {
        "id": some_id,
        "ids": st.lists(some_id, max_size=4),
        "sizes": st.lists(st.integers(0, 1 << 16), max_size=3),
        "size": st.integers(0, 1 << 16),
        "name": st.sampled_from(["a", "b", ""]) | st.text(max_size=5),
        "pattern": st.sampled_from(["*", "vineyard::*", "(", "[a-", ".*"]),
        "limit": st.integers(-2, 20),
        "tree": st.recursive(
            st.fixed_dictionaries({"typename": st.text(max_size=6)}, optional={"x": _scalar_values}),
            lambda inner: st.dictionaries(st.text(max_size=4), inner | _scalar_values | st.fixed_dictionaries(
                {"id": some_id}), max_size=3).map(lambda d: {"typename": "t", **d}),
            max_leaves=6,
        ),
        "labels": st.dictionaries(st.text(max_size=4), _scalar_values, max_size=3),
        "extra": st.dictionaries(st.text(max_size=4), _scalar_values, max_size=3),
        "timeout": st.none() | st.floats(0, 0.01),
        "older_than": st.none() | st.floats(0, 10),
    }.get(name, st.booleans() | _scalar_values)
    return st.one_of(typed, typed, typed, wire_values)


@st.composite
def _request(draw: st.DrawFn, ids: list[int]) -> dict:
    kind = draw(st.sampled_from(sorted(set(REQUESTS) - {"register", "clear", "release"})))
    names = draw(st.lists(st.sampled_from(sorted(REQUESTS[kind]) or ["x"]), unique=True, max_size=6))
    message = {name: draw(_field_strategy(name, ids)) for name in names}
    message["type"] = kind
    if kind == "get_name":
        message["timeout"] = 0.0  # never park the connection
    return message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_requests_never_hit_an_internal_error(victim, data: st.DataObject) -> None:
    with vineyard.connect(victim.socket) as client:
        ids = [int(client.put(np.arange(3))), int(client.put((1, "x"), persist=True))]
        ids.append(int(client.get_meta(ids[0])["buffer_"].id))
        raw = _registered(victim.socket)
        try:
            for message in data.draw(st.lists(_request(ids), min_size=1, max_size=6)):
                payload = b""
                if message["type"] == "create_remote_buffers":
                    try:
                        total = sum(validate_request(message)[1]["sizes"])  # raw bytes follow the frame
                    except RemoteProtocolError:
                        total = 0
                    if total > 1 << 20:
                        continue
                    payload = bytes(total)
                raw.send(encode(message) + payload)
                reply = raw.reply()
                if reply is None:
                    break  # a dropped connection is an allowed answer
                if message["type"] == "get_remote_buffers" and reply["code"] == 0:
                    raw.skip_raw(sum(loc[3] for loc in reply["blobs"] if loc is not None))
                assert reply.get("code") != StatusCode.UNKNOWN_ERROR, (message, reply)
        finally:
            raw.close()
        _still_serving(victim.socket)
    assert victim.proc.poll() is None
