"""The fallback for every other value: pickle protocol 5 into one blob; and a byte framing
of pickled values for streams.

Typename ``vineyard::PickleBuffer`` (keys ``size_``, ``protocol_``, member ``buffer_``).
Out-of-band buffers (numpy arrays inside a dict, say) are written after the pickle stream
in the same blob, so a value is copied once. The blob starts with a little-endian header::

    u64 stream length | u64 buffer count | u64 length of each out-of-band buffer

The fallback can be turned off: a builder or resolver context with ``allow_pickle=False``
(see :func:`vineyard.core.context`), or a client whose ``allow_pickle`` attribute is
``False``, makes :func:`build_pickle` and :func:`resolve_pickle` raise
:class:`~vineyard.errors.UnknownTypeError` instead of pickling or unpickling.

:class:`PickledReader` / :class:`PickledWriter` cut a value into blocks and put it back
together (used to send values through byte streams): bytes-like values pass through raw,
anything else is framed as ``b"__VINEYARD__"``, a big-endian u64 segment count, a
big-endian u64 length per segment, then the segments (the pickle stream and its
out-of-band buffers).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np

from vineyard.errors import UnknownTypeError
from vineyard.meta import ObjectMeta, PendingBlob

__all__ = [
    "PickledReader",
    "PickledWriter",
    "build_pickle",
    "pickle_allowed",
    "register",
    "resolve_pickle",
]

TYPENAME = "vineyard::PickleBuffer"
_HEADER = struct.Struct("<QQ")  # pickle stream length, number of out-of-band buffers
_MAGIC = b"__VINEYARD__"


def pickle_allowed(client: Any, context: Any) -> bool:
    """Whether ``context`` (a builder or resolver context) and ``client`` allow pickle."""
    return bool(getattr(context, "allow_pickle", True)) and getattr(client, "allow_pickle", True) is not False


def _dumps(value: Any) -> list[memoryview]:
    """The pickle stream of ``value`` followed by its out-of-band buffers (not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return [memoryview(stream), *(b.raw() for b in buffers)]


def build_pickle(client: Any, value: Any, builder: Any = None, **kw: Any) -> ObjectMeta:
    """Pickle ``value`` (protocol 5) into one ``vineyard::PickleBuffer``.

    Raises
    ------
    UnknownTypeError
        The pickle fallback is disabled for this context or client.
    """
    if builder is None:
        from vineyard.core.builder import get_current_builders

        builder = get_current_builders()
    if not pickle_allowed(client, builder):
        kind = type(value)
        raise UnknownTypeError(
            f"no builder for {kind.__module__}.{kind.__qualname__} and the pickle fallback is "
            "disabled (allow_pickle=False): register a builder for this type"
        )
    stream, *raws = _dumps(value)
    header = _HEADER.pack(stream.nbytes, len(raws)) + b"".join(struct.pack("<Q", r.nbytes) for r in raws)
    parts = [memoryview(header), stream, *raws]
    total = sum(p.nbytes for p in parts)
    # one allocation for the whole payload: the client then copies it into the blob once
    payload = np.empty(total, dtype=np.uint8)
    pos = 0
    for part in parts:
        payload[pos : pos + part.nbytes] = np.frombuffer(part, dtype=np.uint8)
        pos += part.nbytes
    meta = ObjectMeta(**kw)
    meta["typename"] = TYPENAME
    meta["size_"] = total
    meta["nbytes"] = total
    meta["protocol_"] = 5
    meta.add_member("buffer_", PendingBlob(payload))
    return meta


def resolve_pickle(obj: Any, resolver: Any = None) -> Any:
    """Unpickle a ``vineyard::PickleBuffer``; out-of-band buffers stay views of the blob.

    Raises
    ------
    UnknownTypeError
        Unpickling is disabled for this context or the object's client.
    ValueError
        The payload is truncated or its header is inconsistent.
    """
    if resolver is None:
        from vineyard.core.resolver import get_current_resolvers

        resolver = get_current_resolvers()
    if not pickle_allowed(getattr(obj.meta, "_client", None), resolver):
        raise UnknownTypeError(
            f"refusing to unpickle {obj.id!r} ({obj.meta.typename}): the pickle fallback is "
            "disabled (allow_pickle=False)"
        )
    data = memoryview(obj.member("buffer_")).cast("B")
    if data.nbytes < _HEADER.size:
        raise ValueError(f"pickled object {obj.id!r} is truncated: {data.nbytes} bytes")
    stream_len, count = _HEADER.unpack_from(data, 0)
    pos = _HEADER.size
    if pos + 8 * count > data.nbytes:
        raise ValueError(f"pickled object {obj.id!r} has a corrupt header ({count} buffers)")
    sizes = struct.unpack_from(f"<{count}Q", data, pos)
    pos += 8 * count
    if pos + stream_len + sum(sizes) > data.nbytes:
        raise ValueError(f"pickled object {obj.id!r} is truncated")
    stream = data[pos : pos + stream_len]
    pos += stream_len
    oob = []
    for size in sizes:
        oob.append(data[pos : pos + size])
        pos += size
    return pickle.loads(stream, buffers=oob)


class PickledReader:
    """Read a value as blocks of bytes: raw for bytes-like values, else framed pickle.

    Parameters
    ----------
    value
        Any picklable value.
    """

    def __init__(self, value: Any) -> None:
        self._value = value
        segments: list[memoryview]
        raw = None
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = memoryview(value).cast("B") if memoryview(value).c_contiguous else memoryview(bytes(value))
        if raw is not None and bytes(raw[: len(_MAGIC)]) != _MAGIC:
            segments = [raw]
        else:
            # raw bytes that begin with the magic are framed too, so they read back as bytes
            parts = _dumps(value)
            head = _MAGIC + struct.pack(">Q", len(parts)) + b"".join(struct.pack(">Q", p.nbytes) for p in parts)
            segments = [memoryview(head), *parts]
        self._segments = [s for s in segments if s.nbytes]
        self._index = 0
        self._offset = 0
        self.store_size = sum(s.nbytes for s in self._segments)

    @property
    def value(self) -> Any:
        return self._value

    def read(self, block_size: int) -> memoryview | bytes:
        """The next block of at most ``block_size`` bytes; ``b""`` at the end."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, not {block_size}")
        if self._index >= len(self._segments):
            return b""
        segment = self._segments[self._index]
        block = segment[self._offset : self._offset + block_size]
        self._offset += block.nbytes
        if self._offset >= segment.nbytes:
            self._index += 1
            self._offset = 0
        return block


class PickledWriter:
    """Reassemble what a :class:`PickledReader` produced; ``value`` is set by ``close()``.

    Parameters
    ----------
    store_size
        Total size when known (the buffer is then allocated once); ``-1`` if not.
    """

    def __init__(self, store_size: int = -1) -> None:
        self._size = int(store_size)
        self._buffer = bytearray(self._size if self._size >= 0 else 0)
        self._pos = 0
        self._value: Any = None
        self._closed = False

    @property
    def value(self) -> Any:
        return self._value

    def write(self, block: Any) -> None:
        """Append ``block`` (any bytes-like object).

        Raises
        ------
        ValueError
            The writer is closed or the data exceeds ``store_size``.
        """
        if self._closed:
            raise ValueError("write to a closed PickledWriter")
        data = memoryview(block).cast("B")
        end = self._pos + data.nbytes
        if self._size >= 0 and end > self._size:
            raise ValueError(f"writing {data.nbytes} bytes at {self._pos} overflows the declared size {self._size}")
        self._buffer[self._pos : end] = data
        self._pos = end

    def close(self) -> None:
        """Decode what was written into ``value``.

        Raises
        ------
        ValueError
            Fewer bytes than ``store_size`` were written, or the framing is corrupt.
        """
        if self._closed:
            return
        if self._size >= 0 and self._pos != self._size:
            raise ValueError(f"PickledWriter closed after {self._pos} of {self._size} bytes")
        self._closed = True
        data = memoryview(self._buffer)[: self._pos]
        if bytes(data[: len(_MAGIC)]) != _MAGIC:
            self._value = bytes(data)
            return
        pos = len(_MAGIC)
        try:
            (count,) = struct.unpack_from(">Q", data, pos)
            sizes = struct.unpack_from(f">{count}Q", data, pos + 8)
        except struct.error as exc:
            raise ValueError("corrupt pickled frame header") from exc
        pos += 8 + 8 * count
        if count < 1 or pos + sum(sizes) != data.nbytes:
            raise ValueError("corrupt pickled frame: segment lengths do not add up")
        segments = []
        for size in sizes:
            segments.append(data[pos : pos + size])
            pos += size
        self._value = pickle.loads(segments[0], buffers=segments[1:])


def register(builders: Any, resolvers: Any) -> None:
    """Register the pickle fallback (``object``) and its resolver."""
    if builders is not None:
        builders.register(object, build_pickle)
    if resolvers is not None:
        resolvers.register(TYPENAME, resolve_pickle)
