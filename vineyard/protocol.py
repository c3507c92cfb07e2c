"""The wire protocol, sans I/O: bytes in, messages out, and back.

A frame is an 8-byte little-endian length followed by a msgpack body. Every body is a map.
A request carries ``"type"`` and the fields its schema in :data:`REQUESTS` names; a reply
carries ``"code"`` (0 on success) and, on error, ``"message"``. The same codec serves the
UNIX socket and TCP. Over TCP, blob bytes travel raw right after the frame that announces
them (``sizes`` in the message); :meth:`FrameDecoder.take_raw` hands them out.

Invariant: whatever bytes are fed, :meth:`FrameDecoder.next_message` and
:func:`validate_request` either return a message or raise :class:`RemoteProtocolError` —
never another exception. Nothing here touches a socket.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack

from vineyard.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER",
    "MAX_DEPTH",
    "MAX_FRAME",
    "MAX_NESTING",
    "NEED_DATA",
    "ONEWAY",
    "PROTOCOL_VERSION",
    "REQUESTS",
    "FrameDecoder",
    "check_tree",
    "release_ids",
    "encode",
    "error_reply",
    "ok",
    "validate_request",
]

PROTOCOL_VERSION: Final = 1
HEADER: Final = struct.Struct("<Q")
MAX_FRAME: Final = 256 << 20
MAX_DEPTH: Final = 64
#: Containers a frame may nest: a request or reply wraps a metadata tree in a few levels.
MAX_NESTING: Final = MAX_DEPTH + 8
MAX_ID: Final = (1 << 64) - 1
MAX_SECONDS: Final = 10 * 365 * 86400  # longest timeout a request may ask for


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode(message: dict[str, Any]) -> bytes:
    """One frame holding ``message``.

    Raises
    ------
    LocalProtocolError
        If the message holds something msgpack cannot carry.
    """
    try:
        body = _pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode message: {exc}") from exc
    return HEADER.pack(len(body)) + body


def ok(**fields: Any) -> dict[str, Any]:
    fields["code"] = 0
    return fields


def error_reply(code: int, message: str) -> dict[str, Any]:
    return {"code": int(code), "message": message}


class FrameDecoder:
    """Split a byte stream into messages.

    >>> d = FrameDecoder()
    >>> d.feed(encode({"type": "status"}))
    >>> d.next_message()
    {'type': 'status'}
    >>> d.next_message() is NEED_DATA
    True
    """

    __slots__ = ("_buf", "_check_depth", "_max_frame", "_pos")

    def __init__(self, max_frame: int = MAX_FRAME, check_depth: bool = True) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_frame = max_frame
        # A client trusts its daemon's replies; msgpack's own stack limit still applies.
        self._check_depth = check_depth

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_message(self) -> dict[str, Any] | _NeedData:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 8:
            return NEED_DATA
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self._max_frame:
            raise RemoteProtocolError(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
        end = pos + 8 + length
        if len(buf) < end:
            return NEED_DATA
        body = bytes(buf[pos + 8 : end])
        self._advance(end)
        try:
            message = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises a zoo of types on bad input
            raise RemoteProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
        if not isinstance(message, dict):
            raise RemoteProtocolError(f"a frame must hold a map, not {type(message).__name__}")
        # every container takes at least one byte: a short frame cannot nest too deep
        if self._check_depth and length > MAX_NESTING and _too_deep(message, MAX_NESTING):
            raise RemoteProtocolError(f"a frame nested deeper than {MAX_NESTING} levels")
        return message

    def take_raw(self, limit: int) -> bytes:
        """Up to ``limit`` already-buffered bytes that follow the last frame (raw payload)."""
        end = min(len(self._buf), self._pos + limit)
        chunk = bytes(self._buf[self._pos : end])
        self._advance(end)
        return chunk

    def _advance(self, end: int) -> None:
        self._pos = end
        if end == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif end > (1 << 20):
            del self._buf[:end]
            self._pos = 0


def _too_deep(message: dict[str, Any], limit: int) -> bool:
    """Whether maps and arrays nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(message, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


# ---------------------------------------------------------------------------------------
# Request schemas. A field spec is (checker, default); default _REQUIRED means required.

_REQUIRED: Final = object()


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def _int(value: Any) -> bool:
    return type(value) is int


def _bool(value: Any) -> bool:
    return type(value) is bool


def _str(value: Any) -> bool:
    return type(value) is str


def _opt_str(value: Any) -> bool:
    return value is None or type(value) is str


def _num(value: Any) -> bool:
    return type(value) in (int, float)


def _opt_num(value: Any) -> bool:
    return value is None or type(value) in (int, float)


def _opt_seconds(value: Any) -> bool:
    """None or a finite duration: an infinite or NaN timeout would break the daemon's timers."""
    return value is None or (type(value) in (int, float) and -MAX_SECONDS <= value <= MAX_SECONDS)


def _uints(value: Any) -> bool:
    return type(value) is list and all(type(v) is int and 0 <= v <= MAX_ID for v in value)


def _runs(value: Any) -> bool:
    return type(value) is list and all(type(v) is list and _uints(v) for v in value)


def _bins(value: Any) -> bool:
    return type(value) is list and all(type(v) is bytes for v in value)


def release_ids(message: dict[str, Any]) -> list[int] | None:
    """The blob ids a request releases on the side (``"release"``), if any and well-formed.

    Any request may carry releases so that a client's dropped views cost no extra frame.
    """
    ids = message.get("release")
    return ids if ids is not None and _uints(ids) else None


def _strs(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _map(value: Any) -> bool:
    return type(value) is dict


def _any(value: Any) -> bool:
    return True


Spec = dict[str, tuple[Callable[[Any], bool], Any]]

#: Requests marked oneway get no reply (releases are fire-and-forget).
ONEWAY: Final = frozenset({"release"})

REQUESTS: Final[dict[str, Spec]] = {
    "register": {
        "version": (_int, 0),
        "store_type": (_str, "ipc"),
        "token": (_opt_str, None),
        "session": (_uint, 0),
    },
    "status": {},
    "cluster_meta": {},
    "ping": {},
    "create_buffers": {"sizes": (_uints, _REQUIRED), "runs": (_runs, [])},
    "create_remote_buffers": {"sizes": (_uints, _REQUIRED)},
    "seal": {"ids": (_uints, _REQUIRED)},
    "abort_buffer": {"id": (_uint, _REQUIRED)},
    "shrink_buffer": {"id": (_uint, _REQUIRED), "size": (_uint, _REQUIRED)},
    "get_buffers": {"ids": (_uints, _REQUIRED), "unsafe": (_bool, False)},
    "get_remote_buffers": {"ids": (_uints, _REQUIRED), "unsafe": (_bool, False)},
    "create_data": {
        "tree": (_map, _REQUIRED),
        # small blobs sent with the tree; members refer to them as {"__inline": index}
        "inline": (_bins, None),
        "persist": (_bool, False),
        "name": (_opt_str, None),
    },
    "get_data": {
        "ids": (_uints, _REQUIRED),
        "sync_remote": (_bool, False),
        "blobs": (_bool, True),
    },
    "list_data": {
        "pattern": (_str, "*"),
        "regex": (_bool, False),
        "limit": (_int, 5),
        "nobuffer": (_bool, False),
    },
    "delete": {
        "ids": (_uints, _REQUIRED),
        "force": (_bool, False),
        "deep": (_bool, True),
        "memory_trim": (_bool, False),
    },
    "persist": {"id": (_uint, _REQUIRED)},
    "exists": {"id": (_uint, _REQUIRED)},
    "ref_counts": {"ids": (_uints, _REQUIRED)},
    "shallow_copy": {"id": (_uint, _REQUIRED), "extra": (_map, None)},
    "label": {"id": (_uint, _REQUIRED), "labels": (_map, _REQUIRED)},
    "put_name": {"id": (_uint, _REQUIRED), "name": (_str, _REQUIRED)},
    "get_name": {
        "name": (_str, _REQUIRED),
        "wait": (_bool, False),
        "timeout": (_opt_seconds, None),
    },
    "drop_name": {"name": (_str, _REQUIRED)},
    "list_names": {
        "pattern": (_str, "*"),
        "regex": (_bool, False),
        "limit": (_int, 5),
    },
    "release": {"ids": (_uints, _REQUIRED)},
    "clear": {},
    "delete_by_labels": {"labels": (_map, _REQUIRED), "older_than": (_opt_seconds, None)},
    "evict": {"ids": (_uints, _REQUIRED)},
    "load": {"ids": (_uints, _REQUIRED), "pin": (_bool, False)},
    "unpin": {"ids": (_uints, _REQUIRED)},
    "migrate": {"id": (_uint, _REQUIRED)},  # copy an object of another instance here (store/migration.py)
}


def validate_request(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check a decoded request against its schema and fill in defaults.

    Returns ``(kind, fields)``. Unknown fields are ignored so that newer clients can talk to
    older daemons.

    Raises
    ------
    RemoteProtocolError
        Unknown ``type``, a missing required field or a field of the wrong type.
    """
    kind = message.get("type")
    if type(kind) is not str:
        raise RemoteProtocolError("a request needs a string 'type'")
    spec = REQUESTS.get(kind)
    if spec is None:
        raise RemoteProtocolError(f"unknown request type {kind!r}")
    fields: dict[str, Any] = {}
    for name, (check, default) in spec.items():
        if name in message:
            value = message[name]
            if not check(value):
                raise RemoteProtocolError(
                    f"field {name!r} of {kind!r} has a wrong type or range: {value!r:.80}"
                )
            fields[name] = value
        elif default is _REQUIRED:
            raise RemoteProtocolError(f"request {kind!r} lacks the field {name!r}")
        else:
            fields[name] = default
    return kind, fields


_SCALARS: Final = (str, int, float, bool, type(None))


def check_tree(tree: Any, depth: int = 0) -> None:
    """Check a metadata tree: string keys, JSON-like scalar values, nested maps as members.

    Raises
    ------
    RemoteProtocolError
        On a non-map node, a non-string key, a value that is not a scalar or a member map,
        or nesting deeper than :data:`MAX_DEPTH`.
    """
    if depth > MAX_DEPTH:
        raise RemoteProtocolError(f"metadata tree nested deeper than {MAX_DEPTH}")
    if type(tree) is not dict:
        raise RemoteProtocolError(f"a metadata node must be a map, not {type(tree).__name__}")
    for key, value in tree.items():
        if type(key) is not str:
            raise RemoteProtocolError(f"metadata key {key!r:.40} is not a string")
        if type(value) is dict:
            check_tree(value, depth + 1)
        elif not isinstance(value, _SCALARS):
            raise RemoteProtocolError(
                f"metadata value of {key!r} has unsupported type {type(value).__name__}"
            )
