"""Python scalars, sequences and bytes, with upstream's typenames.

``int``/``bool`` → ``vineyard::Scalar<int>``, ``float`` → ``vineyard::Scalar<double>``
(full double precision), ``str`` → ``vineyard::Scalar<std::string>``, ``tuple``/``list``
→ ``vineyard::Sequence`` (comes back a tuple, as upstream), ``bytes``/``memoryview`` → a
blob (comes back a zero-copy ``memoryview``).
"""

from __future__ import annotations

from typing import Any

from vineyard.meta import Object, ObjectMeta, PendingBlob

__all__ = ["register"]


def build_int(client: Any, value: int, **kw: Any) -> ObjectMeta:
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::Scalar<int>"
    meta["value_"] = int(value)
    meta["type_"] = "bool" if isinstance(value, bool) else "int"
    meta["nbytes"] = 0
    return meta


def build_float(client: Any, value: float, **kw: Any) -> ObjectMeta:
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::Scalar<double>"
    meta["value_"] = float(value)
    meta["type_"] = "double"
    meta["nbytes"] = 0
    return meta


def build_str(client: Any, value: str, **kw: Any) -> ObjectMeta:
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::Scalar<std::string>"
    meta["value_"] = str(value)
    meta["type_"] = "str"
    meta["nbytes"] = 0
    return meta


def build_bytes(client: Any, value: Any, **kw: Any) -> PendingBlob:
    return PendingBlob(value)


def build_sequence(client: Any, value: Any, builder: Any = None, **kw: Any) -> ObjectMeta:
    meta = ObjectMeta(**kw)
    meta["typename"] = "vineyard::Sequence"
    meta["size_"] = len(value)
    meta["__elements_-size"] = len(value)
    for i, item in enumerate(value):
        if isinstance(item, (ObjectMeta, Object)) or type(item).__name__ == "ObjectID":
            meta.add_member(f"__elements_-{i}", item)
        else:
            member = builder.run(client, item) if builder is not None else client.put(item)
            meta.add_member(f"__elements_-{i}", member)
    meta["nbytes"] = 0
    return meta


def resolve_scalar(obj: Any) -> Any:
    meta = obj.meta
    value = meta["value_"]
    typename = meta.typename
    if typename == "vineyard::Scalar<int>":
        return bool(value) if meta.get("type_") == "bool" else int(value)
    if typename in ("vineyard::Scalar<double>", "vineyard::Scalar<float>"):
        return float(value)
    return value


def resolve_sequence(obj: Any, resolver: Any, **kw: Any) -> tuple[Any, ...]:
    size = int(obj.meta["__elements_-size"])
    return tuple(resolver.run(obj.member(f"__elements_-{i}"), **kw) for i in range(size))


def resolve_blob(obj: Any) -> memoryview:
    return memoryview(obj).cast("B") if len(obj) else memoryview(b"")


def register(builders: Any, resolvers: Any) -> None:
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
