"""The sans-IO wire protocol: exact bytes, the decoder's invariant, request validation.
(A live daemon against garbage: ``test_protocol_daemon.py``.)"""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import wire_values

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


_messages = st.dictionaries(st.text(max_size=10), wire_values, max_size=6)


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
                       wire_values | st.sampled_from(sorted(REQUESTS)), max_size=5))
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


def test_release_ids_ride_along_only_when_well_formed() -> None:
    from vineyard.protocol import release_ids

    assert release_ids({"type": "status", "release": [1, 2]}) == [1, 2]
    assert release_ids({"type": "status"}) is None
    assert release_ids({"type": "status", "release": ["x"]}) is None
    assert release_ids({"type": "status", "release": [-1]}) is None
