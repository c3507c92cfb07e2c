"""Python scalars, sequences and bytes, with upstream's typenames.

=====================================  ==================================  ====================
value (matched along the MRO)          typename                            ``get`` returns
=====================================  ==================================  ====================
``int``, ``bool``                      ``vineyard::Scalar<int>``           ``int`` / ``bool``
``float`` (incl. ``np.float64``)       ``vineyard::Scalar<double>``        ``float``
``str`` (incl. ``np.str_``)            ``vineyard::Scalar<std::string>``   ``str``
``tuple``, ``list``                    ``vineyard::Sequence``              ``tuple``
``bytes``, ``bytearray``, memoryview   a blob (``vineyard::Blob``)         read-only memoryview
=====================================  ==================================  ====================

Scalars live in the metadata only (``value_``, ``type_``, ``nbytes == 0``). Differences
from upstream, on purpose: a ``bool`` comes back a ``bool`` (upstream: an ``int``), and a
``float`` keeps full double precision (upstream narrows it to float32). Integers outside
the 64-bit range and strings that are not valid Unicode (lone surrogates) cannot travel
in metadata and go through the pickle fallback instead.

A sequence stores ``size_``, ``__elements_-size`` and one member ``__elements_-i`` per
element, each built with the same builder context; elements that are already stored
(an ``ObjectID``, ``Object`` or ``ObjectMeta``) are referenced, not copied. Lists come
back as tuples, as upstream.

Bytes-like values become a bare blob, copied once; ``get`` returns a zero-copy read-only
``memoryview`` over it (over a private copy for RPC clients).
"""

from __future__ import annotations

from typing import Any

from vineyard.ids import ObjectID
from vineyard.meta import Object, ObjectMeta, PendingBlob

__all__ = [
    "build_bytes",
    "build_float",
    "build_int",
    "build_sequence",
    "build_str",
    "register",
    "resolve_blob",
    "resolve_scalar",
    "resolve_sequence",
]

_INT_MIN = -(1 << 63)
_UINT_MAX = (1 << 64) - 1


def _scalar(typename: str, value: Any, kind: str, kw: dict[str, Any]) -> ObjectMeta:
    meta = ObjectMeta(**kw)
    meta["typename"] = typename
    meta["value_"] = value
    meta["type_"] = kind
    meta["nbytes"] = 0
    return meta


def _pickled(client: Any, value: Any, builder: Any, kw: dict[str, Any]) -> ObjectMeta:
    from vineyard.data.pickle import build_pickle

    return build_pickle(client, value, builder=builder, **kw)


def build_int(client: Any, value: int, builder: Any = None, **kw: Any) -> ObjectMeta:
    """``vineyard::Scalar<int>``; ``type_`` is ``'bool'`` for booleans so they come back
    as ``bool``."""
    number = int(value)
    if not _INT_MIN <= number <= _UINT_MAX:
        # metadata carries 64-bit integers only; bigger ones keep their exact value via pickle
        return _pickled(client, value, builder, kw)
    return _scalar("vineyard::Scalar<int>", number, "bool" if isinstance(value, bool) else "int", kw)


def build_float(client: Any, value: float, **kw: Any) -> ObjectMeta:
    """``vineyard::Scalar<double>`` at full double precision (nan and infinities too)."""
    return _scalar("vineyard::Scalar<double>", float(value), "double", kw)


def build_str(client: Any, value: str, builder: Any = None, **kw: Any) -> ObjectMeta:
    """``vineyard::Scalar<std::string>``."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates cannot travel in metadata (UTF-8); pickle keeps them exactly
        return _pickled(client, value, builder, kw)
    return _scalar("vineyard::Scalar<std::string>", text, "str", kw)


def build_bytes(client: Any, value: Any, **kw: Any) -> PendingBlob:
    """A bare blob holding the bytes (non-contiguous memoryviews are compacted first)."""
    return PendingBlob(value)


def build_sequence(client: Any, value: Any, builder: Any = None, **kw: Any) -> ObjectMeta:
    """``vineyard::Sequence`` with one member per element."""
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::Sequence"
    meta["size_"] = len(value)
    meta["__elements_-size"] = len(value)
    for i, item in enumerate(value):
        if isinstance(item, (ObjectMeta, Object, ObjectID)):
            member = item
        elif builder is not None:
            # as upstream, keywords given to put() are not forwarded to the elements
            member = builder.run(client, item)
        else:
            member = client.put(item)
        meta.add_member(f"__elements_-{i}", member)
    meta["nbytes"] = 0
    return meta


def resolve_scalar(obj: Any) -> Any:
    """The Python value of a ``vineyard::Scalar<...>``."""
    meta = obj.meta
    value = meta["value_"]
    typename = meta.typename
    if typename == "vineyard::Scalar<int>":
        return bool(value) if meta.get("type_") == "bool" else int(value)
    if typename in ("vineyard::Scalar<double>", "vineyard::Scalar<float>"):
        return float(value)
    return value


def resolve_sequence(obj: Any, resolver: Any, **kw: Any) -> tuple[Any, ...]:
    """A tuple of the resolved elements (keywords given to ``get`` reach each element)."""
    size = int(obj.meta["__elements_-size"])
    return tuple(resolver.run(obj.member(f"__elements_-{i}"), **kw) for i in range(size))


def resolve_blob(obj: Any) -> memoryview:
    """A read-only byte memoryview over the blob."""
    return memoryview(obj).cast("B") if len(obj) else memoryview(b"")


def register(builders: Any, resolvers: Any) -> None:
    """Register scalars, sequences and bytes-like values."""
    if builders is not None:
        builders.register(int, build_int)
        builders.register(float, build_float)
        builders.register(str, build_str)
        builders.register(bytes, build_bytes)
        builders.register(bytearray, build_bytes)
        builders.register(memoryview, build_bytes)
        builders.register(tuple, build_sequence)
        builders.register(list, build_sequence)
    if resolvers is not None:
        resolvers.register("vineyard::Scalar", resolve_scalar)
        resolvers.register("vineyard::Sequence", resolve_sequence)
        resolvers.register("vineyard::Blob", resolve_blob)
        resolvers.register("vineyard::RemoteBlob", resolve_blob)
