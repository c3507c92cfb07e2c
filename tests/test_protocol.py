"""The sans-IO wire protocol: exact bytes, the decoder's invariant, request validation.

The last part throws garbage at a live daemon over raw sockets and checks that it answers
with an error or drops that one connection, and keeps serving everybody else.
"""

from __future__ import annotations

import socket
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vineyard
from vineyard.errors import LocalProtocolError, ProtocolError, RemoteProtocolError, StatusCode
from vineyard.protocol import (
    _REQUIRED,
    HEADER,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_NESTING,
    NEED_DATA,
    REQUESTS,
    FrameDecoder,
    check_tree,
    encode,
    error_reply,
    ok,
    validate_request,
)


def frame(body: bytes) -> bytes:
    return struct.pack("<Q", len(body)) + body


# -- encode: exact bytes -------------------------------------------------------------------

ENCODED = [
    ({"type": "ping"}, "0b00000000000000" "81a474797065a470696e67"),
    ({"code": 0}, "0700000000000000" "81a4636f646500"),
    (
        {"type": "seal", "ids": [1, 1 << 63]},
        "1a00000000000000" "82a474797065a47365616ca36964739201cf8000000000000000",
    ),
    ({"code": 12, "message": "x"}, "1100000000000000" "82a4636f64650ca76d657373616765a178"),
    ({}, "0100000000000000" "80"),
    ({"b": b"\x00\xff"}, "0700000000000000" "81a162c40200ff"),
]


@pytest.mark.parametrize(("message", "hex_bytes"), ENCODED)
def test_encode_exact_bytes(message: dict, hex_bytes: str) -> None:
    assert encode(message) == bytes.fromhex(hex_bytes)


@pytest.mark.parametrize(("message", "hex_bytes"), ENCODED)
def test_decode_exact_bytes(message: dict, hex_bytes: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex(hex_bytes))
    assert decoder.next_message() == message
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 0


def test_header_is_eight_bytes_little_endian() -> None:
    assert HEADER.size == 8
    assert encode({"type": "ping"})[:8] == (11).to_bytes(8, "little")


def test_ok_and_error_reply_shapes() -> None:
    assert ok() == {"code": 0}
    assert ok(id=5) == {"id": 5, "code": 0}
    assert error_reply(StatusCode.OBJECT_NOT_EXISTS, "gone") == {"code": 12, "message": "gone"}
    assert type(error_reply(StatusCode.INVALID, "x")["code"]) is int


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": 1 << 64}, {"x": {1, 2}}, {"x": -(1 << 64)}])
def test_encode_rejects_what_msgpack_cannot_carry(bad: dict) -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode(bad)


# -- FrameDecoder --------------------------------------------------------------------------


def test_decoder_needs_a_whole_header_and_body() -> None:
    data = encode({"type": "status"})
    decoder = FrameDecoder()
    for i in range(len(data) - 1):
        decoder.feed(data[i : i + 1])
        assert decoder.next_message() is NEED_DATA
    decoder.feed(data[-1:])
    assert decoder.next_message() == {"type": "status"}


def test_decoder_splits_several_frames_in_one_feed() -> None:
    msgs = [{"type": "ping"}, {"type": "seal", "ids": [1, 2, 3]}, {"code": 0, "x": "é"}]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode(m) for m in msgs) + encode({"type": "status"})[:5])
    assert [decoder.next_message() for _ in range(3)] == msgs
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 5


def test_take_raw_hands_out_bytes_after_a_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode({"code": 0, "sizes": [4]}) + b"abcdXY")
    assert decoder.next_message() == {"code": 0, "sizes": [4]}
    assert decoder.take_raw(4) == b"abcd"
    assert decoder.take_raw(10) == b"XY"
    assert decoder.take_raw(10) == b""
    decoder.feed(encode({"type": "ping"}))
    assert decoder.next_message() == {"type": "ping"}


def test_decoder_keeps_working_after_a_large_prefix() -> None:
    decoder = FrameDecoder()
    big = {"type": "x", "blob": b"\x01" * (3 << 20)}
    decoder.feed(encode(big) + encode({"type": "ping"}))
    assert decoder.next_message() == big
    assert decoder.next_message() == {"type": "ping"}
    assert decoder.buffered == 0


def test_oversized_length_header_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed((1025).to_bytes(8, "little"))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decoder.next_message()
    decoder = FrameDecoder()
    decoder.feed((MAX_FRAME + 1).to_bytes(8, "little"))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (msgpack.packb([1, 2]), "must hold a map"),
        (msgpack.packb("type"), "must hold a map"),
        (msgpack.packb(None), "must hold a map"),
        (b"\xc1", "undecodable"),  # never used in msgpack
        (b"\x81\xa4ty", "undecodable"),  # truncated inside the frame
        (msgpack.packb({"a": 1}) + b"\x00", "undecodable"),  # extra bytes in the frame
        (b"", "undecodable"),
        (b"\x91" * 5000 + b"\x80", "undecodable|nested"),  # msgpack's own stack limit
    ],
)
def test_bad_bodies_raise_remote_protocol_error(body: bytes, match: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(body))
    with pytest.raises(RemoteProtocolError, match=match):
        decoder.next_message()


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(b"\x81\xa1k" * MAX_NESTING + b"\x80"))
    with pytest.raises(RemoteProtocolError, match="nested"):
        decoder.next_message()
    decoder = FrameDecoder()
    decoder.feed(frame(b"\x81\xa1k" * MAX_NESTING + b"\x90"))  # arrays count too
    with pytest.raises(RemoteProtocolError, match="nested"):
        decoder.next_message()
    decoder = FrameDecoder()
    ok_depth = b"\x81\xa1k" * (MAX_NESTING - 1) + b"\x80"
    decoder.feed(frame(ok_depth))
    assert isinstance(decoder.next_message(), dict)


def _drain(decoder: FrameDecoder) -> list[dict]:
    out = []
    for _ in range(10_000):
        message = decoder.next_message()
        if message is NEED_DATA:
            return out
        out.append(message)
    raise AssertionError("decoder never ran out of messages")


def _decode_whole(data: bytes) -> tuple[list[dict], bool]:
    decoder = FrameDecoder(max_frame=1 << 16)
    decoder.feed(data)
    try:
        return _drain(decoder), False
    except RemoteProtocolError:
        return [], True


def _decode_bytewise(data: bytes) -> tuple[list[dict], bool]:
    decoder = FrameDecoder(max_frame=1 << 16)
    out: list[dict] = []
    try:
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
            out.extend(_drain(decoder))
    except RemoteProtocolError:
        return [], True
    return out, False


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    whole, whole_failed = _decode_whole(data)
    bytewise, bytewise_failed = _decode_bytewise(data)
    assert whole_failed == bytewise_failed
    assert whole == bytewise
    assert all(type(m) is dict for m in whole)


_framed_garbage = st.lists(st.binary(max_size=60), max_size=4).map(lambda bodies: b"".join(frame(b) for b in bodies))


@settings(max_examples=300, deadline=None)
@given(_framed_garbage)
def test_well_framed_garbage_decodes_or_raises_remote_protocol_error(data: bytes) -> None:
    # bodies of random bytes inside valid frames reach msgpack instead of the length check
    whole, whole_failed = _decode_whole(data)
    bytewise, bytewise_failed = _decode_bytewise(data)
    assert (whole, whole_failed) == (bytewise, bytewise_failed)


_scalars = (
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_messages = st.dictionaries(st.text(max_size=10), _values, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(_messages, min_size=1, max_size=4), st.integers(1, 17))
def test_messages_roundtrip_through_any_chunking(messages: list[dict], step: int) -> None:
    data = b"".join(encode(m) for m in messages)
    decoder = FrameDecoder()
    out: list[dict] = []
    for i in range(0, len(data), step):
        decoder.feed(data[i : i + step])
        out.extend(_drain(decoder))
    assert out == messages


# -- validate_request ----------------------------------------------------------------------


def test_validate_fills_defaults() -> None:
    assert validate_request({"type": "list_data"}) == (
        "list_data", {"pattern": "*", "regex": False, "limit": 5, "nobuffer": False}
    )
    assert validate_request({"type": "get_name", "name": "n"}) == (
        "get_name", {"name": "n", "wait": False, "timeout": None}
    )
    assert validate_request({"type": "ping", "extra": 1}) == ("ping", {})


BAD_REQUESTS = [
    ({}, "string 'type'"),
    ({"type": 5}, "string 'type'"),
    ({"type": b"ping"}, "string 'type'"),
    ({"type": "no_such_kind"}, "unknown request type"),
    ({"type": "seal"}, "lacks the field 'ids'"),
    ({"type": "seal", "ids": 5}, "'ids'"),
    ({"type": "seal", "ids": [-1]}, "'ids'"),
    ({"type": "seal", "ids": [1 << 64]}, "'ids'"),
    ({"type": "seal", "ids": [True]}, "'ids'"),
    ({"type": "seal", "ids": ["o1"]}, "'ids'"),
    ({"type": "exists", "id": 1.0}, "'id'"),
    ({"type": "exists", "id": None}, "'id'"),
    ({"type": "get_buffers", "ids": [1], "unsafe": 1}, "'unsafe'"),
    ({"type": "create_buffers", "sizes": [1, "2"]}, "'sizes'"),
    ({"type": "create_buffers", "sizes": [1, 2], "runs": [0, 2]}, "'runs'"),
    ({"type": "create_buffers", "sizes": [1, 2], "runs": [[0, -1]]}, "'runs'"),
    ({"type": "create_data", "tree": []}, "'tree'"),
    ({"type": "create_data", "tree": {}, "name": 3}, "'name'"),
    ({"type": "put_name", "id": 1}, "lacks the field 'name'"),
    ({"type": "get_name", "name": "x", "timeout": "1"}, "'timeout'"),
    ({"type": "list_data", "limit": "5"}, "'limit'"),
    ({"type": "label", "id": 1, "labels": [1]}, "'labels'"),
]


@pytest.mark.parametrize(("message", "match"), BAD_REQUESTS)
def test_validate_rejects(message: dict, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        validate_request(message)


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_every_kind_validates_its_required_fields(kind: str) -> None:
    spec = REQUESTS[kind]
    full = {name: _sample(check) for name, (check, _) in spec.items()}
    assert validate_request({"type": kind, **full}) == (kind, full)
    for name, (_, default) in spec.items():
        partial = {"type": kind, **{n: v for n, v in full.items() if n != name}}
        if default is _REQUIRED:
            with pytest.raises(RemoteProtocolError, match=f"lacks the field '{name}'"):
                validate_request(partial)
        else:
            assert validate_request(partial)[1][name] == default


def _sample(check: object) -> object:
    for candidate in (1, [1], "s", {"k": "v"}, True, 1.5, [b"bytes"], [[0, 2]]):
        if check(candidate):  # type: ignore[operator]
            return candidate
    raise AssertionError(f"no sample value passes {check}")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "ids", "id", "name", "sizes", "tree", "labels", "limit", "wait"]),
                       _values | st.sampled_from(sorted(REQUESTS)), max_size=5))
def test_validate_only_raises_remote_protocol_error(message: dict) -> None:
    try:
        kind, fields = validate_request(message)
    except RemoteProtocolError:
        return
    assert kind in REQUESTS
    assert set(fields) == set(REQUESTS[kind])


# -- check_tree ----------------------------------------------------------------------------


def test_check_tree_accepts_plain_trees() -> None:
    check_tree({"typename": "t", "a": 1, "b": 1.5, "c": None, "d": True, "m": {"id": 5}, "n": {"typename": "u"}})


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ([], "must be a map"),
        ({1: "x"}, "not a string"),
        ({"a": [1, 2]}, "unsupported type list"),
        ({"a": b"x"}, "unsupported type bytes"),
        ({"m": {"x": {"y": [1]}}}, "unsupported type list"),
    ],
)
def test_check_tree_rejects(tree: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        check_tree(tree)


def test_check_tree_bounds_depth() -> None:
    tree: dict = {}
    node = tree
    for _ in range(MAX_DEPTH + 5):
        node["m"] = {}
        node = node["m"]
    with pytest.raises(RemoteProtocolError, match="deeper"):
        check_tree(tree)


def test_protocol_errors_are_vineyard_exceptions() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ProtocolError, vineyard.VineyardException)


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


@pytest.fixture(scope="module")
def make_daemon_module():
    from vineyard.testing import Daemon

    started: list[Daemon] = []

    def make(**kw):
        d = Daemon(**kw)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


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
    return st.one_of(typed, typed, typed, _values)


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


def test_release_ids_ride_along_only_when_well_formed() -> None:
    from vineyard.protocol import release_ids

    assert release_ids({"type": "status", "release": [1, 2]}) == [1, 2]
    assert release_ids({"type": "status"}) is None
    assert release_ids({"type": "status", "release": ["x"]}) is None
    assert release_ids({"type": "status", "release": [-1]}) is None
