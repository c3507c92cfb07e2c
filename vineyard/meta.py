"""The object model seen by clients: :class:`ObjectMeta`, :class:`Object` and blobs.

An :class:`ObjectMeta` is a tree: plain values (str, int, float, bool, None) and members,
which are trees themselves. As upstream, lists and dicts set on a meta are stored as
compact JSON strings, so ``meta["shape_"] = [2, 3]`` reads back ``"[2,3]"``; unlike upstream,
floats keep full double precision (``docs/compat.md``).

A :class:`Blob` is a read-only one-dimensional ``uint8`` array over the store's shared
memory; ``memoryview(blob)``, ``np.frombuffer(blob, ...)`` and ``pa.py_buffer(blob)`` all
share its pages. A :class:`BlobBuilder` is the writable counterpart before seal.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID, INVALID_ID, ObjectID

if TYPE_CHECKING:
    from vineyard.client import ClientBase

__all__ = [
    "Blob",
    "BlobBuilder",
    "Object",
    "ObjectBuilder",
    "ObjectMeta",
    "PendingBlob",
    "RemoteBlob",
    "RemoteBlobBuilder",
]

BLOB_TYPENAME = "vineyard::Blob"
GLOBAL_INSTANCE = (1 << 64) - 1


class PendingBlob:
    """Bytes a builder wants stored as a blob; copied in by the client in one batch.

    Builders add it as a member (``meta.add_member("buffer_", PendingBlob(array))``); the
    client allocates every pending blob of a tree in one request, copies each once, and
    seals them together with the metadata.
    """

    __slots__ = ("_reused", "nbytes", "source")

    def __init__(self, source: Any) -> None:
        self._reused = False  # set by the client when an existing blob already holds the bytes
        if isinstance(source, np.ndarray):
            flat = source if source.flags.c_contiguous else np.ascontiguousarray(source)
            self.source = flat.reshape(-1).view(np.uint8) if flat.size else np.empty(0, np.uint8)
        else:
            view = memoryview(source)
            if not view.c_contiguous:
                view = memoryview(view.tobytes())
            self.source = np.frombuffer(view.cast("B"), dtype=np.uint8) if view.nbytes else np.empty(0, np.uint8)
        self.nbytes = int(self.source.nbytes)

    def __repr__(self) -> str:
        return f"PendingBlob({self.nbytes} bytes)"


def _plain(value: Any) -> Any:
    """A value as stored in metadata (upstream's typed ``__setitem__`` rules)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        return _plain(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), default=_json_default)
    raise TypeError(f"cannot store a {type(value).__name__} in object metadata")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, ObjectID):
        return repr(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ObjectMeta:
    """Metadata of an object: a dict-like tree of plain values and members."""

    __slots__ = ("_buffers", "_client", "_tree")

    def __init__(self, global_: bool = False, *args: Any, **kwargs: Any) -> None:
        self._tree: dict[str, Any] = {}
        self._client: ClientBase | None = None
        self._buffers: dict[int, Any] = {}
        if global_:
            self._tree["global"] = True

    @classmethod
    def _wrap(cls, tree: dict[str, Any], client: ClientBase | None, buffers: dict[int, Any]) -> ObjectMeta:
        meta = cls.__new__(cls)
        meta._tree = tree
        meta._client = client
        meta._buffers = buffers
        return meta

    # -- well-known keys ---------------------------------------------------------------
    @property
    def id(self) -> ObjectID:
        raw = self._tree.get("id")
        return ObjectID(INVALID_ID if raw is None else raw)

    @id.setter
    def id(self, value: int) -> None:
        self._tree["id"] = int(ObjectID(value))

    @property
    def signature(self) -> int:
        return int(self._tree.get("signature", 0))

    @property
    def typename(self) -> str:
        return str(self._tree.get("typename", ""))

    @typename.setter
    def typename(self, value: str) -> None:
        self._tree["typename"] = str(value)

    @property
    def nbytes(self) -> int:
        return int(self._tree.get("nbytes", 0))

    @nbytes.setter
    def nbytes(self, value: int) -> None:
        self._tree["nbytes"] = int(value)

    @property
    def instance_id(self) -> int:
        return int(self._tree.get("instance_id", INVALID_ID))

    @property
    def islocal(self) -> bool:
        if "id" not in self._tree:
            return True
        client = self._client
        return client is not None and self.instance_id == client.instance_id

    @property
    def isglobal(self) -> bool:
        return bool(self._tree.get("global", False))

    def set_global(self, global_: bool = True) -> None:
        self._tree["global"] = bool(global_)

    @property
    def transient(self) -> bool:
        return bool(self._tree.get("transient", True))

    @property
    def meta(self) -> ObjectMeta:
        return self

    @property
    def timestamp(self) -> int:
        return int(self._tree.get("__timestamp", 0))

    @property
    def labels(self) -> dict[str, str]:
        raw = self._tree.get("__labels")
        return json.loads(raw) if raw else {}

    def label(self, key: str) -> str | None:
        return self.labels.get(key)

    @property
    def memory_usage(self) -> int:
        return sum(int(getattr(b, "nbytes", 0)) for b in self._buffers.values())

    def force_local(self) -> None:
        if self._client is not None:
            self._tree["instance_id"] = self._client.instance_id

    # -- dict protocol -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._tree

    def __getitem__(self, key: str) -> Any:
        try:
            value = self._tree[key]
        except KeyError:
            raise KeyError(f"key '{key}' does not exist") from None
        if type(value) is dict:
            return ObjectMeta._wrap(value, self._client, self._buffers)
        if key == "id" and value is not None:
            return repr(ObjectID(value))
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._tree else default

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, (ObjectMeta, Object, PendingBlob, BlobBuilder, ObjectID, Blob)):
            self.add_member(key, value, replace=True)
            return
        self._tree[str(key)] = _plain(value)

    def __delitem__(self, key: str) -> None:
        del self._tree[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tree)

    def __len__(self) -> int:
        return len(self._tree)

    def keys(self) -> Iterator[str]:
        return iter(self._tree)

    def items(self) -> Iterator[tuple[str, Any]]:
        for key in self._tree:
            yield key, self[key]

    def reset(self) -> None:
        self._tree = {}
        self._buffers = {}

    def reset_key(self, key: str) -> None:
        self._tree.pop(key, None)

    def reset_signature(self) -> None:
        self._tree.pop("signature", None)

    # -- members -----------------------------------------------------------------------
    def add_member(self, key: str, value: Any, replace: bool = False) -> None:
        """Add a member: an ``ObjectMeta``, ``Object``, ``ObjectID``, blob or ``PendingBlob``."""
        if key in self._tree and not replace:
            raise KeyError(f"key '{key}' already exists in the metadata")
        if isinstance(value, PendingBlob):
            self._tree[key] = value
        elif isinstance(value, ObjectMeta):
            self._tree[key] = value._tree
            if value._buffers is not self._buffers:
                self._buffers.update(value._buffers)
        elif isinstance(value, (Object, Blob, BlobBuilder)):
            meta = value.meta
            self._tree[key] = meta._tree
            self._buffers.update(meta._buffers)
        elif isinstance(value, int):
            self._tree[key] = {"id": int(value)}
        else:
            raise TypeError(f"a member must be metadata, an object or an id, not {type(value).__name__}")

    def get_member(self, key: str) -> Object | None:
        value = self._tree.get(key)
        if type(value) is not dict:
            return None
        return Object.from_(ObjectMeta._wrap(value, self._client, self._buffers))

    member = get_member

    def get_buffer(self, blob_id: int) -> memoryview:
        return memoryview(self._buffers[int(blob_id)])

    # -- text and pickling -------------------------------------------------------------
    def _json(self) -> Any:
        def clean(node: Any) -> Any:
            if type(node) is dict:
                return {
                    k: (repr(ObjectID(v)) if k == "id" and isinstance(v, int) else clean(v)) for k, v in node.items()
                }
            if isinstance(node, PendingBlob):
                return repr(node)
            return node

        return clean(self._tree)

    def __repr__(self) -> str:
        return json.dumps(self._json(), indent=4)

    def __str__(self) -> str:
        return "ObjectMeta " + repr(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"tree": self._json()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        def restore(node: Any) -> Any:
            if type(node) is dict:
                return {
                    k: (int(ObjectID(v)) if k == "id" and isinstance(v, str) else restore(v)) for k, v in node.items()
                }
            return node

        self._tree = restore(state["tree"])
        self._client = None
        self._buffers = {}


class Object:
    """A stored object: its metadata, plus access to members and blobs."""

    __slots__ = ("_meta",)

    def __init__(self, meta: ObjectMeta) -> None:
        self._meta = meta

    @staticmethod
    def from_(meta: ObjectMeta) -> Any:
        """The object for ``meta``: a :class:`Blob` for blobs, else an :class:`Object`."""
        if meta.typename == BLOB_TYPENAME:
            buffer = meta._buffers.get(int(meta._tree["id"]))
            if buffer is not None:
                return buffer
            if int(meta._tree["id"]) == EMPTY_BLOB_ID:
                return Blob._empty(meta)
        return Object(meta)

    @property
    def id(self) -> ObjectID:
        return self._meta.id

    @property
    def signature(self) -> int:
        return self._meta.signature

    @property
    def meta(self) -> ObjectMeta:
        return self._meta

    @property
    def nbytes(self) -> int:
        return self._meta.nbytes

    @property
    def typename(self) -> str:
        return self._meta.typename

    @property
    def islocal(self) -> bool:
        return self._meta.islocal

    @property
    def ispersist(self) -> bool:
        return not self._meta.transient

    @property
    def isglobal(self) -> bool:
        return self._meta.isglobal

    def member(self, name: str) -> Any:
        member = self._meta.get_member(name)
        if member is None:
            raise KeyError(f"object {self.id!r} has no member '{name}'")
        return member

    __getitem__ = member

    def __repr__(self) -> str:
        return f'Object <"{self.id!r}": {self.typename}>'

    __str__ = __repr__


class ObjectBuilder:
    """Base of things that become objects when sealed."""

    @property
    def issealed(self) -> bool:
        return False


class Blob(np.ndarray):
    """A sealed blob: a read-only ``uint8`` array over shared memory (or copied bytes).

    ``len(blob)``, ``blob.size`` and ``blob.nbytes`` are its length in bytes;
    ``memoryview(blob)`` and ``np.frombuffer(blob, dtype)`` are zero-copy.
    """

    # The blob keeps its metadata's tree and client, and builds an ObjectMeta when asked:
    # an ObjectMeta holds its buffers, so keeping one here would make a cycle (blob -> meta
    # -> buffers -> blob) that holds the shared memory until the garbage collector runs.
    _vineyard_tree: dict[str, Any] | None
    _vineyard_client: Any

    @classmethod
    def _make(cls, buffer: Any, meta: ObjectMeta) -> Blob:
        if isinstance(buffer, np.ndarray):
            blob = buffer.view(cls)
        else:
            blob = np.frombuffer(buffer, dtype=np.uint8).view(cls) if len(buffer) else np.empty(0, np.uint8).view(cls)
        blob.flags.writeable = False
        blob._vineyard_tree = meta._tree
        blob._vineyard_client = meta._client
        return blob

    @property
    def _vineyard_meta(self) -> ObjectMeta | None:
        tree = self._vineyard_tree
        if tree is None:
            return None
        return ObjectMeta._wrap(tree, self._vineyard_client, {int(tree.get("id", EMPTY_BLOB_ID)): self})

    @classmethod
    def _empty(cls, meta: ObjectMeta | None = None) -> Blob:
        if meta is None:
            meta = ObjectMeta._wrap(_blob_tree(EMPTY_BLOB_ID, 0, 0), None, {})
        return cls._make(b"", meta)

    @staticmethod
    def empty(client: Any = None) -> Blob:
        return Blob._empty()

    def __array_finalize__(self, obj: Any) -> None:
        self._vineyard_tree = getattr(obj, "_vineyard_tree", None)
        self._vineyard_client = getattr(obj, "_vineyard_client", None)

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        result = np.asarray(array).view(np.ndarray)
        return result[()] if return_scalar else result

    def __getitem__(self, key: Any) -> Any:
        return self.view(np.ndarray)[key]

    @property
    def id(self) -> ObjectID:
        return self._vineyard_meta.id

    @property
    def meta(self) -> ObjectMeta:
        return self._vineyard_meta

    @property
    def typename(self) -> str:
        return BLOB_TYPENAME

    @property
    def signature(self) -> int:
        return self._vineyard_meta.signature

    @property
    def instance_id(self) -> int:
        return self._vineyard_meta.instance_id

    @property
    def islocal(self) -> bool:
        return True

    @property
    def ispersist(self) -> bool:
        return False

    @property
    def isglobal(self) -> bool:
        return False

    @property
    def is_empty(self) -> bool:
        return self.nbytes == 0

    @property
    def address(self) -> int:
        return int(self.__array_interface__["data"][0])

    @property
    def buffer(self) -> memoryview:
        return memoryview(self)

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return int(self.nbytes)

    def __repr__(self) -> str:
        meta = self._vineyard_meta
        return f'Blob <"{meta.id!r}": {self.nbytes} bytes>' if meta is not None else "Blob <detached>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        return (bytes, (self.tobytes(),))


RemoteBlob = Blob


def _blob_tree(blob_id: int, size: int, instance_id: int) -> dict[str, Any]:
    return {
        "id": blob_id,
        "typename": BLOB_TYPENAME,
        "length": size,
        "nbytes": size,
        "instance_id": instance_id,
        "transient": True,
    }


class BlobBuilder(np.ndarray):
    """A blob being written: a writable ``uint8`` array; ``seal(client)`` makes it a Blob."""

    _vineyard_meta: ObjectMeta
    _vineyard_client: Any

    @classmethod
    def _make(cls, buffer: Any, meta: ObjectMeta, client: Any) -> BlobBuilder:
        array = np.frombuffer(buffer, dtype=np.uint8) if len(memoryview(buffer)) else np.zeros(0, np.uint8)
        builder = array.view(cls)
        builder._vineyard_meta = meta
        builder._vineyard_client = client
        return builder

    def __array_finalize__(self, obj: Any) -> None:
        self._vineyard_meta = getattr(obj, "_vineyard_meta", None)  # type: ignore[assignment]
        self._vineyard_client = getattr(obj, "_vineyard_client", None)

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        result = np.asarray(array).view(np.ndarray)
        return result[()] if return_scalar else result

    def __getitem__(self, key: Any) -> Any:
        return self.view(np.ndarray)[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, str):
            self._vineyard_meta[key] = value
            return
        self.view(np.ndarray)[key] = value

    @property
    def id(self) -> ObjectID:
        return self._vineyard_meta.id

    @property
    def meta(self) -> ObjectMeta:
        return self._vineyard_meta

    @property
    def address(self) -> int:
        return int(self.__array_interface__["data"][0])

    @property
    def issealed(self) -> bool:
        return False

    def __len__(self) -> int:
        return int(self.nbytes)

    def __bool__(self) -> bool:
        return True

    def copy(self, offset: int, source: Any = None, size: int | None = None, concurrency: int = 0) -> None:  # type: ignore[override]
        """Copy ``source`` (bytes-like) into the blob at ``offset``."""
        src = np.frombuffer(memoryview(source).cast("B"), dtype=np.uint8)
        if size is not None:
            src = src[:size]
        if offset < 0 or offset + src.nbytes > self.nbytes:
            from vineyard.errors import AssertionFailedException

            raise AssertionFailedException(
                f"copying {src.nbytes} bytes at offset {offset} overflows the blob of {self.nbytes} bytes"
            )
        np.copyto(self.view(np.ndarray)[offset : offset + src.nbytes], src)

    def seal(self, client: Any) -> Blob:
        return client._seal_builder(self)

    def abort(self, client: Any) -> None:
        client._abort_builder(self)

    def shrink(self, client: Any, size: int) -> None:
        client._shrink_builder(self, size)

    def __repr__(self) -> str:
        return f'BlobBuilder <"{self.id!r}": {self.nbytes} bytes>'

    __str__ = __repr__


class RemoteBlobBuilder:
    """Bytes to upload as a blob through an RPC client: ``create_remote_blob(builder)``."""

    def __init__(self, size: int = 0) -> None:
        self._buffer: Any = bytearray(size)
        self.size = size

    @staticmethod
    def make(size: int) -> RemoteBlobBuilder:
        return RemoteBlobBuilder(size)

    @staticmethod
    def wrap(data: Any, nbytes: int | None = None) -> RemoteBlobBuilder:
        builder = RemoteBlobBuilder(0)
        view = memoryview(data).cast("B")
        builder._buffer = view if nbytes is None else view[:nbytes]
        builder.size = len(builder._buffer)
        return builder

    def __len__(self) -> int:
        return self.size

    def __buffer__(self, flags: int) -> memoryview:
        return memoryview(self._buffer)

    @property
    def buffer(self) -> memoryview:
        return memoryview(self._buffer)

    def copy(self, offset: int, source: Any) -> None:
        data = memoryview(source).cast("B")
        if offset + len(data) > self.size:
            from vineyard.errors import AssertionFailedException

            raise AssertionFailedException("copy overflows the remote blob builder")
        memoryview(self._buffer)[offset : offset + len(data)] = data

    def abort(self, client: Any = None) -> None:
        self._buffer = bytearray(0)
        self.size = 0


def _is_blob_id(value: int) -> bool:
    return bool(value & BLOB_BIT)
