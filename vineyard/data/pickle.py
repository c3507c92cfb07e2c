"""The fallback for every other value: pickle protocol 5 into one blob.

Typename ``vineyard::PickleBuffer``. Out-of-band buffers (numpy arrays inside a dict, say)
are written after the pickle stream in the same blob, so a value is copied once.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np

from vineyard.meta import ObjectMeta, PendingBlob

__all__ = ["build_pickle", "register", "resolve_pickle"]

_HEADER = struct.Struct("<QQ")  # pickle stream length, number of out-of-band buffers


def build_pickle(client: Any, value: Any, **kw: Any) -> ObjectMeta:
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    header = _HEADER.pack(len(stream), len(raws)) + b"".join(struct.pack("<Q", r.nbytes) for r in raws)
    parts = [header, stream, *raws]
    total = sum(len(memoryview(p).cast("B")) for p in parts)
    payload = np.empty(total, dtype=np.uint8)
    pos = 0
    for part in parts:
        view = np.frombuffer(memoryview(part).cast("B"), dtype=np.uint8)
        payload[pos : pos + view.nbytes] = view
        pos += view.nbytes
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::PickleBuffer"
    meta["size_"] = total
    meta["nbytes"] = total
    meta["protocol_"] = 5
    meta.add_member("buffer_", PendingBlob(payload))
    return meta


def resolve_pickle(obj: Any) -> Any:
    data = memoryview(obj.member("buffer_")).cast("B")
    stream_len, count = _HEADER.unpack_from(data, 0)
    pos = _HEADER.size
    sizes = [struct.unpack_from("<Q", data, pos + 8 * i)[0] for i in range(count)]
    pos += 8 * count
    stream = data[pos : pos + stream_len]
    pos += stream_len
    oob = []
    for size in sizes:
        oob.append(data[pos : pos + size])
        pos += size
    return pickle.loads(stream, buffers=oob)


def register(builders: Any, resolvers: Any) -> None:
    if builders is not None:
        builders.register(object, build_pickle)
    if resolvers is not None:
        resolvers.register("vineyard::PickleBuffer", resolve_pickle)
