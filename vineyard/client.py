"""Clients: :func:`connect`, :class:`Client`, :class:`IPCClient` and :class:`RPCClient`.

``put(value)`` costs two round trips whatever the value's shape: one request allocates
every blob the builder asked for, the client copies each buffer once straight into shared
memory, and one request creates the whole metadata tree, seals its blobs, and optionally
persists and names it. ``get(id)`` is one round trip: the reply carries the whole tree and
where each blob lives; the resolver builds arrays over the mapping without copying.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import numbers
import os
import threading
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from vineyard.errors import (
    ConnectionFailedException,
    InvalidException,
    ObjectNotExistsException,
    ObjectSealedException,
    StoreUnavailable,
    VineyardException,
)
from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID, ObjectID, ObjectName
from vineyard.meta import (
    BLOB_TYPENAME,
    Blob,
    BlobBuilder,
    Object,
    ObjectMeta,
    PendingBlob,
    RemoteBlobBuilder,
    _blob_tree,
)
from vineyard.protocol import MAX_DEPTH, MAX_ID, MAX_SECONDS
from vineyard.transport import IPCTransport, RPCTransport, _Transport, copy_into

__all__ = ["Client", "ClientBase", "IPCClient", "InstanceStatus", "RPCClient", "connect"]

log = logging.getLogger(__name__)

#: New blobs of a put up to this many bytes in all travel inside the create request.
INLINE_LIMIT = 64 << 10


def _id(value: Any) -> int:
    """An object id from an ObjectID, int, ``'o…'`` string, ObjectMeta, Object or blob."""
    if isinstance(value, ObjectMeta):
        return int(value.id)
    if isinstance(value, (Object, Blob, BlobBuilder)):
        return int(value.id)
    if isinstance(value, bool):
        raise TypeError("an object id cannot be a bool")
    if isinstance(value, (int, np.integer)):
        if not 0 <= int(value) < (1 << 64):
            raise ValueError(f"object id out of range: {value}")
        return int(value)
    if isinstance(value, str):
        return int(ObjectID(value))
    raise TypeError(f"expected an object id, ObjectMeta or Object, not {type(value).__name__}")


def _ids(values: Any) -> list[int]:
    if isinstance(values, (list, tuple, set)):
        return [_id(v) for v in values]
    return [_id(values)]


def _too_deep(tree: dict[str, Any], limit: int) -> bool:
    """Whether member maps nest more than ``limit`` levels below ``tree``."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        for value in node.values():
            if type(value) is dict:
                if depth >= limit:
                    return True
                stack.append((value, depth + 1))
    return False


def _name(name: Any) -> str:
    if isinstance(name, (ObjectName, str)):
        return str(name)
    raise TypeError(f"a name must be a str or ObjectName, not {type(name).__name__}")


class InstanceStatus:
    """What a daemon reports about itself (``client.status``)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.instance_id: int = fields["instance_id"]
        self.deployment: str = fields["deployment"]
        self.memory_usage: int = fields["memory_usage"]
        self.memory_limit: int = fields["memory_limit"]
        self.cached_memory: int = fields.get("cached_memory", 0)
        self.deferred_requests: int = fields["deferred_requests"]
        self.ipc_connections: int = fields["ipc_connections"]
        self.rpc_connections: int = fields["rpc_connections"]
        self.objects: int = fields.get("objects", 0)
        self.blobs: int = fields.get("blobs", 0)
        self.names: int = fields.get("names", 0)
        self.spilled_blobs: int = fields.get("spilled_blobs", 0)  # blobs now on disk (--spill-path)
        self.spilled_bytes: int = fields.get("spilled_bytes", 0)
        self.spill_failures: int = fields.get("spill_failures", 0)  # failed spill writes since start
        self.spill_error: str | None = fields.get("spill_error")  # the last failure, if any

    def __repr__(self) -> str:
        keys = ("instance_id", "deployment", "memory_usage", "memory_limit", "deferred_requests",
                "ipc_connections", "rpc_connections")
        body = "".join(f"    {k}: {getattr(self, k)},\n" for k in keys)
        return "{\n" + body + "}"

    def __str__(self) -> str:
        return "InstanceStatus:\n" + repr(self)


class ClientBase:
    """Everything a connection can do; :class:`Client` adds connection resolution."""

    def __init__(self, transport: _Transport, token: str | None = None) -> None:
        self._t = transport
        self._token = token
        self._retired: list[_Transport] = []
        self._lock = threading.Lock()
        transport.register(token)

    # -- connection facts --------------------------------------------------------------
    @property
    def instance_id(self) -> int:
        return int(self._t.info["instance_id"])

    @property
    def ipc_socket(self) -> str:
        return str(self._t.info.get("ipc_socket", ""))

    @property
    def rpc_endpoint(self) -> str:
        return str(self._t.info.get("rpc_endpoint", ""))

    @property
    def version(self) -> str:
        return str(self._t.info.get("version", ""))

    @property
    def is_ipc(self) -> bool:
        return self._t.kind == "ipc"

    @property
    def is_rpc(self) -> bool:
        return self._t.kind == "rpc"

    @property
    def connected(self) -> bool:
        return self._t.connected

    @property
    def remote_instance_id(self) -> int:
        return self.instance_id

    @property
    def status(self) -> InstanceStatus:
        return InstanceStatus(self._t.request({"type": "status"}))

    @property
    def meta(self) -> dict[int, dict[str, Any]]:
        reply = self._t.request({"type": "cluster_meta"})
        return {int(k): v for k, v in reply["instances"].items()}

    def debug(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._t.request({"type": "status"})

    def sync_meta(self) -> None:
        """Pull remote metadata (a no-op with the local metadata backend)."""
        if self._t.info.get("meta") == "etcd":
            self._t.request({"type": "cluster_meta"})  # the daemon catches up with the cluster first

    def close(self) -> None:
        self._t.close()
        for transport in self._retired:
            transport.close()
        self._retired.clear()

    def __enter__(self) -> ClientBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fork(self) -> ClientBase:
        """Give this client a new connection to the same daemon (needed after ``os.fork``).

        Returns the client itself, as upstream's wrapper does.
        """
        old = self._t
        self._t = self._new_transport()
        self._t.register(self._token)
        if os.getpid() == old._pid:
            self._retired.append(old)  # its views may still be alive: keep it until close()
        return self

    def _new_transport(self) -> _Transport:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._t.kind} {self._t.where}, instance {self.instance_id})"

    # -- put ---------------------------------------------------------------------------
    def put(
        self, value: Any, builder: Any = None, persist: bool = False, name: str | None = None, **kw: Any
    ) -> ObjectID:
        """Store ``value`` and return its id.

        Parameters
        ----------
        value
            Anything a builder is registered for (along ``type(value).__mro__``); other
            objects go through the pickle fallback.
        builder
            A callable ``builder(client, value, **kw)`` to use instead of the registry;
            its result is returned unchanged (upstream's behaviour).
        persist
            Publish the metadata to the cluster (needed for names).
        name
            A name to give the object; needs ``persist=True``.

        Raises
        ------
        NotEnoughMemoryException
            The store is full; nothing was stored.
        UnknownTypeError
            No builder for the type and the pickle fallback is disabled.
        """
        if builder is not None:
            return builder(self, value, **kw)  # type: ignore[no-any-return]
        from vineyard.core.builder import get_current_builders

        if name is not None:
            name = _name(name)  # a bad name fails here, before any memory is taken
        if name is not None and not persist:
            warnings.warn("The object is not persisted, the name won't be associated.", UserWarning, stacklevel=2)
            name = None
        result = get_current_builders().run(self, value, **kw)
        return self._finish(result, persist, name)

    def _finish(self, result: Any, persist: bool = False, name: str | None = None) -> ObjectID:
        if isinstance(result, ObjectMeta):
            if "id" not in result._tree:
                return self._create(result, persist, name).id
            object_id = result.id
        elif isinstance(result, PendingBlob):
            object_id = self._store_blob(result)
        elif isinstance(result, (Object, Blob, BlobBuilder)):
            object_id = result.id
        elif isinstance(result, int):
            object_id = ObjectID(result)
        else:
            raise TypeError(f"a builder returned {type(result).__name__}, not metadata or an id")
        if persist:
            self.persist(object_id)
        if name is not None:
            self.put_name(object_id, name)
        return ObjectID(object_id)

    def create_metadata(self, metadata: Any, instance_id: int | None = None) -> Any:
        """Create the object(s) described by ``metadata`` (one meta or a list); returns them
        with ``id``, ``signature`` and ``instance_id`` filled in."""
        if isinstance(metadata, (list, tuple)):
            return [self._create(m) for m in metadata]
        return self._create(metadata)

    def _create(self, meta: ObjectMeta, persist: bool = False, name: str | None = None) -> ObjectMeta:
        if not isinstance(meta, ObjectMeta):
            raise TypeError(f"expected ObjectMeta, not {type(meta).__name__}")
        if "typename" not in meta._tree:
            from vineyard.errors import MetaTreeInvalidException

            raise MetaTreeInvalidException("metadata needs a 'typename' before it can be created")
        if _too_deep(meta._tree, MAX_DEPTH):  # the daemon would refuse it, or drop the connection
            from vineyard.errors import MetaTreeInvalidException

            raise MetaTreeInvalidException(f"metadata tree nested deeper than {MAX_DEPTH} levels")
        new_blobs, inline, inline_slots = self._materialize(meta._tree)
        request: dict[str, Any] = {"type": "create_data", "tree": meta._tree, "persist": persist}
        if name is not None:
            request["name"] = _name(name)
        if inline:
            request["inline"] = inline
        try:
            reply = self._t.request(request)
        except VineyardException:
            self._discard_blobs(new_blobs)
            for node, key, _ in inline_slots:
                del node[key]  # the tree must not keep placeholders of blobs never made
            raise
        for (node, key, size), blob_id in zip(inline_slots, reply.get("inlined", ()), strict=True):
            node[key] = _blob_tree(blob_id, size, reply["instance_id"])
        created = iter(reply["created"])
        instance = reply["instance_id"]

        def assign(node: dict[str, Any], top: bool) -> None:
            if "id" in node and not top:
                return
            object_id, signature = next(created)
            node["id"] = object_id
            node["signature"] = signature
            node["instance_id"] = instance
            node["transient"] = not persist
            node.setdefault("nbytes", 0)
            for value in node.values():
                if type(value) is dict:
                    assign(value, False)

        assign(meta._tree, True)
        meta._client = self
        if new_blobs and self.is_ipc:
            self._t.queue_release(new_blobs)  # type: ignore[attr-defined]
        return meta

    def _discard_blobs(self, blob_ids: list[int]) -> None:
        """Best effort: give back the blobs of a tree the daemon refused, so they do not
        linger (unsealed ones are aborted, sealed ones, as RPC uploads are, deleted)."""
        for blob_id in blob_ids:
            try:
                try:
                    self._t.request({"type": "abort_buffer", "id": blob_id})
                except ObjectSealedException:
                    self._t.request({"type": "delete", "ids": [blob_id]})
            except StoreUnavailable:
                return
            except VineyardException:
                continue

    def _materialize(
        self, tree: dict[str, Any]
    ) -> tuple[list[int], list[bytes], list[tuple[dict[str, Any], str, int]]]:
        """Turn every PendingBlob in ``tree`` into a blob.

        Returns the blobs created (to release after create), and, when everything new is
        small, the bytes to send inline with the tree and where they go: a small put then
        costs one round trip instead of two.
        """
        slots: list[tuple[dict[str, Any], str, PendingBlob]] = []

        def walk(node: dict[str, Any]) -> None:
            for key, value in node.items():
                if type(value) is dict:
                    if "id" not in value:
                        walk(value)
                elif isinstance(value, PendingBlob):
                    slots.append((node, key, value))

        walk(tree)
        if not slots:
            return [], [], []
        instance = self.instance_id
        found = [EMPTY_BLOB_ID if p.nbytes == 0 else self._find_blob(p.source) for _, _, p in slots]
        if sum(p.nbytes for (_, _, p), f in zip(slots, found) if f is None) <= INLINE_LIMIT:
            inline: list[bytes] = []
            inline_slots: list[tuple[dict[str, Any], str, int]] = []
            for (node, key, pending), blob_id in zip(slots, found):
                if blob_id is not None:
                    node[key] = _blob_tree(blob_id, pending.nbytes, instance)
                else:
                    node[key] = {"__inline": len(inline)}
                    inline.append(pending.source.tobytes())
                    inline_slots.append((node, key, pending.nbytes))
            return [], inline, inline_slots
        ids = self._store_pending([p for _, _, p in slots], seal=False, found=found)
        for (node, key, pending), blob_id in zip(slots, ids, strict=True):
            node[key] = _blob_tree(blob_id, pending.nbytes, instance)
        new_blobs = [
            i for i, (_, _, p) in zip(ids, slots, strict=True)
            if i != EMPTY_BLOB_ID and not getattr(p, "_reused", False)
        ]
        return new_blobs, [], []

    def _store_blob(self, pending: PendingBlob) -> ObjectID:
        (blob_id,) = self._store_pending([pending], seal=True)
        return ObjectID(blob_id)

    def _store_pending(
        self, pendings: list[PendingBlob], seal: bool, found: list[int | None] | None = None
    ) -> list[int]:
        """Allocate and fill blobs for ``pendings``; reuse blobs the sources already are
        (``found``: those already looked up, one entry per pending)."""
        ids: list[int | None] = [None] * len(pendings)
        todo: list[int] = []
        for i, pending in enumerate(pendings):
            if pending.nbytes == 0:
                ids[i] = EMPTY_BLOB_ID
                continue
            existing = found[i] if found is not None else self._find_blob(pending.source)
            if existing is not None:
                ids[i] = existing
                pending._reused = True  # type: ignore[attr-defined]
            else:
                todo.append(i)
        if todo:
            new_ids = self._upload([pendings[i] for i in todo], seal)
            for i, blob_id in zip(todo, new_ids, strict=True):
                ids[i] = blob_id
        return [int(i) for i in ids]  # type: ignore[arg-type]

    def _find_blob(self, source: np.ndarray) -> int | None:
        return None

    def _upload(self, pendings: list[PendingBlob], seal: bool) -> list[int]:
        raise NotImplementedError

    # -- get ---------------------------------------------------------------------------
    def get(self, object_id: Any = None, name: Any = None, resolver: Any = None, fetch: bool = False, **kw: Any) -> Any:
        """The value stored under ``object_id`` (or ``name``), zero-copy where columnar.

        Raises
        ------
        ObjectNotExistsException
            No such object or name.
        """
        if object_id is None:
            if name is None:
                raise ValueError("get() needs an object id or a name")
            object_id = self.get_name(name)
        obj = self.get_object(object_id, fetch=fetch)
        if resolver is not None:
            return resolver(obj, **kw)
        from vineyard.core.resolver import get_current_resolvers

        return get_current_resolvers().run(obj, __vineyard_client=self, **kw)

    def get_object(self, object_id: Any, sync_remote: bool = True, fetch: bool = False) -> Any:
        if fetch:
            object_id = self.migrate(object_id)
        return self.get_objects([object_id], sync_remote)[0]

    def get_objects(self, object_ids: Iterable[Any], sync_remote: bool = True) -> list[Any]:
        metas = self.get_metas(object_ids, sync_remote)
        if self._t.info.get("meta") == "etcd":  # blobs on other instances come over RPC
            from vineyard.remote import fetch_remote_blobs

            for meta in metas:
                fetch_remote_blobs(self, meta)
        return [Object.from_(m) for m in metas]

    def migrate(self, object_id: Any) -> ObjectID:
        """Copy an object of another instance into this daemon, once (later calls get the same
        copy: a new persisted object with the same signature); one already here comes back."""
        return ObjectID(self._t.request({"type": "migrate", "id": _id(object_id)})["id"])

    def get_meta(self, object_id: Any, sync_remote: bool = True) -> ObjectMeta:
        return self.get_metas([object_id], sync_remote)[0]

    def get_metas(self, object_ids: Iterable[Any], sync_remote: bool = True) -> list[ObjectMeta]:
        ids = [_id(o) for o in object_ids]
        trees, buffers = self._fetch(ids)
        return [ObjectMeta._wrap(tree, self, buffers) for tree in trees]

    def _fetch(self, ids: list[int]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        raise NotImplementedError

    @staticmethod
    def _blob_nodes(tree: dict[str, Any], out: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        if tree.get("typename") == BLOB_TYPENAME:
            out[tree["id"]] = tree
            return out
        for value in tree.values():
            if type(value) is dict:
                ClientBase._blob_nodes(value, out)
        return out

    # -- metadata operations -----------------------------------------------------------
    def persist(self, object_id: Any) -> None:
        self._t.request({"type": "persist", "id": _id(object_id)})

    def exists(self, object_id: Any) -> bool:
        return bool(self._t.request({"type": "exists", "id": _id(object_id)})["exists"])

    def ref_counts(self, object_ids: Any) -> list[int | None]:
        """How many connections reference each object (read-only; not in upstream).

        A blob's count is the number of connections holding it; an object's is the number
        holding at least one of its blobs. ``None`` for an id that does not exist.
        """
        return list(self._t.request({"type": "ref_counts", "ids": _ids(object_ids)})["counts"])

    def delete(
        self, object_id: Any, force: bool = False, deep: bool = True, memory_trim: bool = False
    ) -> list[ObjectID]:
        """Delete objects. Returns the ids kept because other objects still hold them.

        Upstream skips those silently; we return them and log a warning (``force=True``
        deletes the holders too).
        """
        ids = _ids(object_id)
        reply = self._t.request({"type": "delete", "ids": ids, "force": bool(force), "deep": bool(deep),
                                 "memory_trim": bool(memory_trim)})
        kept = [ObjectID(i) for i in reply.get("kept", ())]
        if kept:
            log.warning("not deleted, still a member of other objects (use force=True): %s",
                        ", ".join(repr(k) for k in kept))
        return kept

    def shallow_copy(self, object_id: Any, extra_metadata: dict[str, Any] | None = None) -> ObjectID:
        request: dict[str, Any] = {"type": "shallow_copy", "id": _id(object_id)}
        if extra_metadata:
            request["extra"] = dict(extra_metadata)
        return ObjectID(self._t.request(request)["id"])

    def label(self, object_id: Any, key: Any, value: Any = None) -> None:
        labels = dict(key) if isinstance(key, dict) else {str(key): value}
        self._t.request({"type": "label", "id": _id(object_id), "labels": {str(k): str(v) for k, v in labels.items()}})

    def delete_by_labels(self, labels: dict[str, Any], older_than: float | None = None) -> list[ObjectID]:
        """Delete every top-level object carrying all ``labels`` (and older than, in seconds)."""
        if not isinstance(labels, dict):
            raise TypeError(f"labels must be a dict, not {type(labels).__name__}")
        if older_than is not None and (isinstance(older_than, bool) or not isinstance(older_than, numbers.Real)):
            raise TypeError(f"older_than must be a number of seconds or None, not {type(older_than).__name__}")
        reply = self._t.request({"type": "delete_by_labels", "labels": {str(k): str(v) for k, v in labels.items()},
                                 "older_than": None if older_than is None else float(older_than)})
        return [ObjectID(i) for i in reply["deleted"]]

    def list_metadatas(
        self, pattern: str = "*", regex: bool = False, limit: int = 5, nobuffer: bool = False
    ) -> list[ObjectMeta]:
        reply = self._t.request({"type": "list_data", "pattern": str(pattern), "regex": bool(regex),
                                 "limit": int(limit), "nobuffer": bool(nobuffer)})
        return [ObjectMeta._wrap(tree, self, {}) for tree in reply["metas"]]

    def list_objects(self, pattern: str = "*", regex: bool = False, limit: int = 5) -> list[Object]:
        return [Object(m) for m in self.list_metadatas(pattern, regex, limit, nobuffer=False)]

    def clear(self) -> None:
        """Delete every object and blob of this instance."""
        self._t.request({"type": "clear"})

    reset = clear

    def memory_trim(self) -> bool:
        """Give cached free memory back to the OS."""
        self._t.request({"type": "delete", "ids": [], "memory_trim": True})
        return True

    def allocated_size(self, object_id: Any) -> int:
        meta = self.get_meta(object_id)
        return sum(node["length"] for node in self._blob_nodes(meta._tree, {}).values())

    def release_object(self, object_id: Any) -> None:
        """No-op kept for upstream compatibility: references drop with the last view."""

    def release_objects(self, object_ids: Any) -> None:
        """No-op kept for upstream compatibility: references drop with the last view."""

    # -- names -------------------------------------------------------------------------
    def put_name(self, object_id: Any, name: Any) -> None:
        self._t.request({"type": "put_name", "id": _id(object_id), "name": _name(name)})

    def get_name(self, name: Any, wait: bool = False, timeout: float | None = None) -> ObjectID:
        """The id named ``name``; with ``wait=True`` block until it appears (or ``timeout`` s)."""
        request: dict[str, Any] = {"type": "get_name", "name": _name(name), "wait": bool(wait)}
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
                raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
            if math.isnan(timeout):
                raise ValueError("timeout must be a number of seconds, not NaN")
            if timeout < MAX_SECONDS:  # an infinite (or longer) timeout: no timeout
                request["timeout"] = float(timeout)
        return ObjectID(self._t.request(request)["id"])

    def drop_name(self, name: Any) -> None:
        self._t.request({"type": "drop_name", "name": _name(name)})

    def list_names(self, pattern: str = "*", regex: bool = False, limit: int = 5) -> dict[str, ObjectID]:
        reply = self._t.request(
            {"type": "list_names", "pattern": str(pattern), "regex": bool(regex), "limit": int(limit)}
        )
        return {k: ObjectID(v) for k, v in reply["names"].items()}

    # -- spilling ----------------------------------------------------------------------
    def evict(self, object_ids: Any) -> None:
        self._t.request({"type": "evict", "ids": _ids(object_ids)})

    def load(self, object_ids: Any, pin: bool = False) -> None:
        self._t.request({"type": "load", "ids": _ids(object_ids), "pin": bool(pin)})

    def unpin(self, object_ids: Any) -> None:
        self._t.request({"type": "unpin", "ids": _ids(object_ids)})

    # -- shared memory addresses -------------------------------------------------------
    def find_shared_memory(self, pointer: Any) -> ObjectID | None:
        """The blob starting exactly at ``pointer`` (an address or a buffer), if any."""
        return None

    def is_shared_memory(self, pointer: Any) -> bool:
        return self.find_shared_memory(pointer) is not None

    def create_empty_blob(self) -> Blob:
        return Blob._empty()


def _adjacent_runs(sources: list[np.ndarray]) -> list[list[int]]:
    """``[start, count]`` of each stretch of two or more non-empty sources that lie one
    after the other in memory (the columns of one DataFrame block do)."""
    runs: list[list[int]] = []
    start, end = 0, -1
    for i, source in enumerate(sources):
        address = source.__array_interface__["data"][0]
        if source.nbytes and address == end:
            end += source.nbytes
            continue
        if i - start > 1:
            runs.append([start, i - start])
        start, end = i, (address + source.nbytes if source.nbytes else -1)
    if len(sources) - start > 1:
        runs.append([start, len(sources) - start])
    return runs


def _span(first: np.ndarray, nbytes: int) -> np.ndarray:
    """The ``nbytes`` that start at ``first`` (whose neighbours the caller holds alive)."""
    address = first.__array_interface__["data"][0]
    return np.frombuffer((ctypes.c_char * nbytes).from_address(address), dtype=np.uint8)


def _address(pointer: Any) -> int:
    if isinstance(pointer, (int, np.integer)):
        return int(pointer)
    if isinstance(pointer, np.ndarray):
        return int(pointer.__array_interface__["data"][0])
    view = memoryview(pointer)
    if view.nbytes == 0:
        return 0
    return int(np.frombuffer(view.cast("B"), dtype=np.uint8).__array_interface__["data"][0])


class IPCClient(ClientBase):
    """A client on the daemon's UNIX socket: blobs are mapped, never copied."""

    _t: IPCTransport

    def __init__(self, socket: str, timeout: float = 1.0) -> None:
        self._socket = str(socket)
        self._timeout = timeout
        super().__init__(IPCTransport(self._socket, timeout))

    def _new_transport(self) -> _Transport:
        return IPCTransport(self._socket, self._timeout)

    def _upload(self, pendings: list[PendingBlob], seal: bool) -> list[int]:
        t = self._t
        runs = _adjacent_runs([p.source for p in pendings])
        message: dict[str, Any] = {"type": "create_buffers", "sizes": [p.nbytes for p in pendings]}
        if runs:
            message["runs"] = runs
        reply = t.request(message)
        locs = reply["blobs"]
        ids = [loc[0] for loc in locs]
        i = 0
        for start, count in [*runs, [len(pendings), 0]]:
            for pending, (_, seg, off, size) in zip(pendings[i:start], locs[i:start], strict=True):
                copy_into(t.writable(seg, off, size), pending.source)
            run = locs[start : start + count]
            if count and all(b[1] == run[0][1] and b[2] == a[2] + a[3] for a, b in itertools.pairwise(run)):
                # sources side by side, blobs side by side: one copy for the run
                total = sum(p.nbytes for p in pendings[start : start + count])
                _, seg, off, _ = run[0]
                copy_into(t.writable(seg, off, total), _span(pendings[start].source, total))
            else:  # (a daemon that did not place the run: one copy per blob)
                for pending, (_, seg, off, size) in zip(pendings[start : start + count], run, strict=True):
                    copy_into(t.writable(seg, off, size), pending.source)
            i = start + count
        if seal:
            t.request({"type": "seal", "ids": ids})
            t.queue_release(ids)
        return ids

    def _find_blob(self, source: np.ndarray) -> int | None:
        hit = self._t.addresses.get(int(source.__array_interface__["data"][0]))
        if hit is not None and hit[1] == source.nbytes:
            return hit[0]
        return None

    def find_shared_memory(self, pointer: Any) -> ObjectID | None:
        hit = self._t.addresses.get(_address(pointer))
        return ObjectID(hit[0]) if hit is not None else None

    def _fetch(self, ids: list[int]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        with self._t._lock:  # no release may slip out between the reply and the views
            return self._fetch_locked(ids)

    def _fetch_locked(self, ids: list[int]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        reply = self._t.request({"type": "get_data", "ids": ids})
        trees = reply["metas"]
        buffers: dict[int, Any] = {}
        locs = reply["blobs"]
        if locs:
            instance = self.instance_id
            for loc, array in zip(locs, self._views(locs), strict=True):
                blob_id = loc[0]
                if blob_id not in buffers:
                    # the same fields as the blob's node in the tree (see ObjectStore.tree)
                    node = _blob_tree(blob_id, loc[3], instance)
                    buffers[blob_id] = Blob._make(array, ObjectMeta._wrap(node, self, buffers))
        return trees, buffers

    def _views(self, locs: list[Any]) -> list[Any]:
        """An array (or ``b""``) per blob location; blobs that lie one after the other (a
        run, such as the columns of a DataFrame block) share one exporter."""
        t = self._t
        views = t._views
        out: list[Any] = []
        i, n = 0, len(locs)
        while i < n:
            blob_id, seg, off, size = locs[i]
            j = i + 1
            if size and blob_id not in views:
                end = off + size
                while j < n:
                    nxt = locs[j]
                    if nxt[1] != seg or nxt[2] != end or not nxt[3] or nxt[0] in views:
                        break
                    end += nxt[3]
                    j += 1
            if j - i > 1:
                out.extend(t.view_run(locs[i:j]))
            else:
                out.append(t.view(blob_id, seg, off, size) if size else b"")
            i = j
        return out

    # -- blob-level API ----------------------------------------------------------------
    def create_blob(self, size: int | list[int]) -> Any:
        """Allocate unsealed blob(s): write into the returned BlobBuilder, then ``seal``."""
        sizes = list(size) if isinstance(size, (list, tuple)) else [size]
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= MAX_ID:
                raise ValueError(f"a blob size must be a non-negative integer, not {s!r}")
        reply = self._t.request({"type": "create_buffers", "sizes": [int(s) for s in sizes]})
        builders = []
        for blob_id, seg, off, n in reply["blobs"]:
            buffer = self._t.writable_view(seg, off, n)
            meta = ObjectMeta._wrap(_blob_tree(blob_id, n, self.instance_id), self, {})
            builders.append(BlobBuilder._make(buffer, meta, self))
        return builders if isinstance(size, (list, tuple)) else builders[0]

    def _seal_builder(self, builder: BlobBuilder) -> Blob:
        blob_id = int(builder.id)
        if blob_id != EMPTY_BLOB_ID:
            self._t.request({"type": "seal", "ids": [blob_id]})
        return self.get_blob(blob_id)

    def _abort_builder(self, builder: BlobBuilder) -> None:
        if int(builder.id) != EMPTY_BLOB_ID:
            self._t.request({"type": "abort_buffer", "id": int(builder.id)})

    def _shrink_builder(self, builder: BlobBuilder, size: int) -> None:
        self._t.request({"type": "shrink_buffer", "id": int(builder.id), "size": int(size)})
        builder.meta._tree["length"] = builder.meta._tree["nbytes"] = int(size)

    def get_blob(self, object_id: Any, unsafe: bool = False) -> Blob:
        blob = self.get_blobs([object_id], unsafe)[0]
        if blob is None:
            raise ObjectNotExistsException(f"blob {ObjectID(_id(object_id))!r} does not exist")
        return blob

    def get_blobs(self, object_ids: Iterable[Any], unsafe: bool = False) -> list[Blob | None]:
        ids = [_id(o) for o in object_ids]
        for i in ids:
            if not i & BLOB_BIT:
                raise InvalidException(f"{ObjectID(i)!r} is not a blob id")
        out: list[Blob | None] = []
        with self._t._lock:  # no release may slip out between the reply and the views
            reply = self._t.request({"type": "get_buffers", "ids": ids, "unsafe": bool(unsafe)})
            for loc in reply["blobs"]:
                if loc is None:
                    out.append(None)
                    continue
                blob_id, seg, off, size = loc
                meta = ObjectMeta._wrap(_blob_tree(blob_id, size, self.instance_id), self, {})
                blob = Blob._make(self._t.view(blob_id, seg, off, size) if size else b"", meta)
                meta._buffers[blob_id] = blob
                out.append(blob)
        return out


class RPCClient(ClientBase):
    """A client over TCP: the same API, with blob bytes copied over the socket."""

    _t: RPCTransport

    def __init__(self, host: str, port: int | str, token: str | None = None, timeout: float = 1.0) -> None:
        self._host, self._port, self._timeout = str(host), int(port), timeout
        super().__init__(RPCTransport(self._host, self._port, timeout), token=token)

    def _new_transport(self) -> _Transport:
        return RPCTransport(self._host, self._port, self._timeout)

    def _upload(self, pendings: list[PendingBlob], seal: bool) -> list[int]:
        reply = self._t.request(
            {"type": "create_remote_buffers", "sizes": [p.nbytes for p in pendings]},
            raw=[p.source.data for p in pendings],
        )
        return [loc[0] for loc in reply["blobs"]]

    def _fetch(self, ids: list[int]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        reply = self._t.request({"type": "get_data", "ids": ids, "blobs": False})
        trees = reply["metas"]
        nodes: dict[int, dict[str, Any]] = {}
        for tree in trees:
            self._blob_nodes(tree, nodes)
        buffers: dict[int, Any] = {}
        here = self.instance_id  # blobs of other instances: see get_objects
        wanted = [i for i in nodes if i != EMPTY_BLOB_ID and nodes[i].get("instance_id", here) == here]
        if wanted:
            _, data = self._t.request_download({"type": "get_remote_buffers", "ids": wanted})
            for blob_id, buf in zip(wanted, data, strict=True):
                if buf is None:
                    raise ObjectNotExistsException(f"blob {ObjectID(blob_id)!r} is gone")
                meta = ObjectMeta._wrap(nodes[blob_id], self, buffers)
                buffers[blob_id] = Blob._make(memoryview(buf).toreadonly(), meta)
        return trees, buffers

    def create_remote_blob(self, builder: Any) -> Any:
        builders = list(builder) if isinstance(builder, (list, tuple)) else [builder]
        pendings = [PendingBlob(b.buffer if isinstance(b, RemoteBlobBuilder) else b) for b in builders]
        ids = self._store_pending(pendings, seal=True)
        metas = [
            ObjectMeta._wrap(_blob_tree(i, p.nbytes, self.instance_id), self, {})
            for i, p in zip(ids, pendings, strict=True)
        ]
        return metas if isinstance(builder, (list, tuple)) else metas[0]

    def get_remote_blob(self, object_id: Any, unsafe: bool = False) -> Blob:
        blob = self.get_remote_blobs([object_id], unsafe)[0]
        if blob is None:
            raise ObjectNotExistsException(f"blob {ObjectID(_id(object_id))!r} does not exist")
        return blob

    def get_remote_blobs(self, object_ids: Iterable[Any], unsafe: bool = False) -> list[Blob | None]:
        ids = [_id(o) for o in object_ids]
        reply, data = self._t.request_download({"type": "get_remote_buffers", "ids": ids, "unsafe": bool(unsafe)})
        out: list[Blob | None] = []
        for loc, buf in zip(reply["blobs"], data, strict=True):
            if loc is None or buf is None:
                out.append(None)
                continue
            meta = ObjectMeta._wrap(_blob_tree(loc[0], loc[3], self.instance_id), self, {})
            out.append(Blob._make(memoryview(buf).toreadonly(), meta))
        return out

    get_blob = get_remote_blob
    get_blobs = get_remote_blobs

    def create_blob(self, size: Any) -> Any:
        raise InvalidException("an RPC client cannot map shared memory: use create_remote_blob()")


def _parse_endpoint(endpoint: Any) -> list[tuple[str, int]]:
    if isinstance(endpoint, (tuple, list)) and len(endpoint) == 2 and not isinstance(endpoint[0], (tuple, list)):
        return [(str(endpoint[0]), int(endpoint[1]))]
    out = []
    for part in str(endpoint).split(","):
        part = part.strip()
        if not part:
            continue
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"an RPC endpoint must look like host:port, not {part!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def _config_socket(config: str | None) -> tuple[str | None, str | None]:
    """IPC socket and RPC endpoint from a ``vineyard-config.yaml`` (file or directory)."""
    path = config or os.environ.get("VINEYARD_CONFIG") or "/var/run"
    candidates = [path] if os.path.isfile(path) else [
        os.path.join(path, "vineyard-config.yaml"), os.path.join(path, "vineyard", "vineyard-config.yaml")
    ]
    for candidate in candidates:
        if not os.path.isfile(candidate):
            continue
        try:
            import yaml

            with open(candidate) as f:
                doc = yaml.safe_load(f) or {}
        except Exception:  # an unreadable config is ignored, as upstream
            return None, None
        section = doc.get("Vineyard", {}) if isinstance(doc, dict) else {}
        sock = section.get("IPCSocket")
        if sock and not os.path.isabs(sock):
            sock = os.path.join(os.path.dirname(candidate), sock)
        return (sock if sock and os.path.exists(sock) else None), section.get("RPCEndpoint")
    return None, None


class Client(IPCClient, RPCClient):
    """The client :func:`connect` returns: IPC when a socket is known, else RPC.

    Resolution follows upstream: ``socket`` argument, ``$VINEYARD_IPC_SOCKET``, the config
    file; then ``endpoint`` / ``host``+``port``, ``$VINEYARD_RPC_ENDPOINT``. ``connect(host,
    port)`` means RPC.
    """

    def __init__(
        self,
        socket: str | None = None,
        port: int | str | None = None,
        host: str | None = None,
        endpoint: Any = None,
        rdma_endpoint: Any = None,
        session: int | None = None,
        username: str | None = None,
        password: str | None = None,
        config: str | None = None,
        token: str | None = None,
        timeout: float = 1.0,
    ) -> None:
        if socket is not None and port is not None and host is None:
            socket, host = None, socket
        # An endpoint named in the call wins over $VINEYARD_IPC_SOCKET (upstream prefers the
        # environment's IPC socket, so connect(host, port) silently was not RPC).
        explicit_rpc = socket is None and (endpoint is not None or (host is not None and port is not None))
        cfg_socket, cfg_endpoint = (None, None)
        if socket is None and not explicit_rpc and not os.environ.get("VINEYARD_IPC_SOCKET"):
            cfg_socket, cfg_endpoint = _config_socket(config)
        ipc = socket or (None if explicit_rpc else os.environ.get("VINEYARD_IPC_SOCKET") or cfg_socket)
        self._timeout = timeout
        self._token = token if token is not None else os.environ.get("VINEYARD_RPC_TOKEN")
        if ipc:
            self._socket = str(ipc)
            self._kind = "ipc"
            ClientBase.__init__(self, IPCTransport(self._socket, timeout))
            return
        endpoints: list[tuple[str, int]] = []
        if endpoint is not None:
            endpoints += _parse_endpoint(endpoint)
        if host is not None and port is not None:
            endpoints.append((str(host), int(port)))
        if not endpoints:
            env = os.environ.get("VINEYARD_RPC_ENDPOINT") or cfg_endpoint
            if env:
                endpoints += _parse_endpoint(env)
        if not endpoints:
            raise ConnectionFailedException(
                "no vineyard daemon to connect to: pass a socket path, set VINEYARD_IPC_SOCKET, "
                "or give an RPC endpoint (host, port)"
            )
        errors = []
        for h, p in endpoints:
            try:
                self._host, self._port, self._kind = h, p, "rpc"
                ClientBase.__init__(self, RPCTransport(h, p, timeout), token=self._token)
                return
            except ConnectionFailedException as exc:
                errors.append(str(exc))
        raise ConnectionFailedException("; ".join(errors))

    def _new_transport(self) -> _Transport:
        if self._kind == "ipc":
            return IPCTransport(self._socket, self._timeout)
        return RPCTransport(self._host, self._port, self._timeout)

    def _upload(self, pendings: list[PendingBlob], seal: bool) -> list[int]:
        return (IPCClient._upload if self._kind == "ipc" else RPCClient._upload)(self, pendings, seal)

    def _fetch(self, ids: list[int]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        return (IPCClient._fetch if self._kind == "ipc" else RPCClient._fetch)(self, ids)

    def _find_blob(self, source: np.ndarray) -> int | None:
        return IPCClient._find_blob(self, source) if self._kind == "ipc" else None

    def find_shared_memory(self, pointer: Any) -> ObjectID | None:
        return IPCClient.find_shared_memory(self, pointer) if self._kind == "ipc" else None

    def create_blob(self, size: Any) -> Any:
        return (IPCClient.create_blob if self._kind == "ipc" else RPCClient.create_blob)(self, size)

    def get_blob(self, object_id: Any, unsafe: bool = False) -> Blob:
        return (IPCClient.get_blob if self._kind == "ipc" else RPCClient.get_remote_blob)(self, object_id, unsafe)

    def get_blobs(self, object_ids: Iterable[Any], unsafe: bool = False) -> list[Blob | None]:
        return (IPCClient.get_blobs if self._kind == "ipc" else RPCClient.get_remote_blobs)(self, object_ids, unsafe)

    def create_remote_blob(self, builder: Any) -> Any:
        if self._kind == "ipc":
            raise InvalidException("create_remote_blob needs an RPC connection; use create_blob")
        return RPCClient.create_remote_blob(self, builder)

    def get_remote_blob(self, object_id: Any, unsafe: bool = False) -> Blob:
        return self.get_blob(object_id, unsafe)

    def get_remote_blobs(self, object_ids: Iterable[Any], unsafe: bool = False) -> list[Blob | None]:
        return self.get_blobs(object_ids, unsafe)

    @property
    def ipc_client(self) -> Client:
        assert self._kind == "ipc", "this client has no IPC connection"
        return self

    @property
    def rpc_client(self) -> Client:
        assert self._kind == "rpc", "this client has no RPC connection"
        return self

    def has_ipc_client(self) -> bool:
        return self._kind == "ipc"

    def has_rpc_client(self) -> bool:
        return self._kind == "rpc"

    def default_client(self) -> Client:
        return self


_SITE_CONFIGS = ("/var/run/vineyard-config.yaml", "/var/run/vineyard/vineyard-config.yaml")


def connect(*args: Any, **kwargs: Any) -> Client:
    """Connect to a daemon: ``connect(socket_path)``, ``connect(host, port)``, ``connect()``.

    With nothing given and nothing configured (``VINEYARD_IPC_SOCKET``,
    ``VINEYARD_RPC_ENDPOINT``, ``VINEYARD_CONFIG``), a private local daemon is started for
    this process, as upstream does (see :func:`vineyard.deploy.local.try_init`).

    Raises
    ------
    ConnectionFailedException
        No daemon answers at the given place.
    """
    if not args and not kwargs and not any(
        os.environ.get(v) for v in ("VINEYARD_IPC_SOCKET", "VINEYARD_RPC_ENDPOINT", "VINEYARD_CONFIG")
    ) and not any(os.path.exists(p) for p in _SITE_CONFIGS):
        from vineyard.deploy.local import try_init

        log.info("No vineyard socket or endpoint is specified, try to launch a standalone one.")
        try_init()
    return Client(*args, **kwargs)
