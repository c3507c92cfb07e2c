"""A worker process's attachment to its store, and which of its values live there.

One :class:`WorkerStore` per store socket per process holds the one client that the data
mapping, the serializers, the collection tasks and the worker plugin share. Attachments are
counted, so the mapping and the plugin can each attach and the connection closes with the last.

Values that are views of stored objects are recorded in a process-wide registry (by ``id``,
with a weak reference), so that:

* the serializer can tell that a value it is asked to send already lives in the store and send
  its object ID instead (:mod:`vineyard.contrib.dask.serialize`);
* the data mapping adopts such a value without storing it a second time.

Lifetime rule for the objects the integration creates (*managed* objects, labelled
``source=dask-worker``): an object lives while some connection holds one of its blobs. A worker
holds a blob while a view of it is alive in its process (a key in its data mapping, a running
task's argument, an outgoing transfer). When a worker lets go of one, it asks the daemon how
many connections still hold the object and deletes it at zero; if others still hold it, the
last of them deletes it; if its own views outlive the key (a task still runs with it), the
object is watched and :meth:`WorkerStore.sweep` retries. Objects the integration did not
create (partitions of global objects, values the user stored) are never deleted here.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import vineyard
from vineyard.errors import ConnectionFailedException, ObjectNotExistsException, StoreUnavailable
from vineyard.ids import ObjectID

__all__ = [
    "LABEL_KEY",
    "LABEL_SOURCE",
    "LABEL_WORKER",
    "GC_INTERVAL",
    "GC_TRIES",
    "SOURCE",
    "SWEEP_MIN_AGE",
    "Backing",
    "WorkerStore",
    "attach",
    "backing_of",
    "detach",
    "find_store",
    "register_view",
    "resolve_socket",
    "sweep_by_label",
]

log = logging.getLogger(__name__)

LABEL_SOURCE = "source"
SOURCE = "dask-worker"
LABEL_WORKER = "dask_worker"
LABEL_KEY = "dask_key"
# An object younger than this (seconds) is never swept by label: it may be between its put
# and the producer's first get, when no connection holds it yet.
SWEEP_MIN_AGE = 1.0
#: Seconds between the garbage collections a sweep may run (see :meth:`WorkerStore.sweep`).
GC_INTERVAL = 2.0
#: Garbage collections tried for one watched object before leaving it to its other holders.
GC_TRIES = 3


@dataclass(frozen=True, slots=True)
class Backing:
    """Where a value in this process lives: an object of a store this process is attached to.

    ``managed`` objects were created by the integration for task results and are deleted
    when no connection holds them any more; others belong to whoever stored them.
    """

    object_id: ObjectID
    store: WorkerStore
    managed: bool


_backed: dict[int, tuple[weakref.ref[Any], Backing]] = {}
# Reentrant: a weak-reference callback may run (on garbage collection) while it is held.
_backed_lock = threading.RLock()


def register_view(value: Any, backing: Backing) -> None:
    """Record that ``value`` is a view of ``backing.object_id`` for as long as it lives."""
    key = id(value)

    def forget(ref: weakref.ref[Any], key: int = key) -> None:
        with _backed_lock:
            entry = _backed.get(key)
            if entry is not None and entry[0] is ref:
                del _backed[key]

    ref = weakref.ref(value, forget)
    with _backed_lock:
        _backed[key] = (ref, backing)


def backing_of(value: Any) -> Backing | None:
    """The object ``value`` is a registered view of, if any."""
    with _backed_lock:
        entry = _backed.get(id(value))
    if entry is not None and entry[0]() is value:
        return entry[1]
    return None


def resolve_socket(socket_path: str | None = None) -> str:
    """The IPC socket to use: the argument, dask config ``vineyard.ipc-socket``, or
    ``$VINEYARD_IPC_SOCKET``.

    Raises
    ------
    ConnectionFailedException
        None of them names a socket.
    """
    if socket_path:
        return str(socket_path)
    import dask.config

    configured = dask.config.get("vineyard.ipc-socket", default=None) or os.environ.get("VINEYARD_IPC_SOCKET")
    if not configured:
        raise ConnectionFailedException(
            "no vineyard socket for this Dask worker: pass socket=..., set the dask config "
            "'vineyard.ipc-socket' or the environment variable VINEYARD_IPC_SOCKET"
        )
    return str(configured)


def _identity(path: str, instance_id: int) -> str:
    """A name for one running daemon: host, the socket file's device and inode, instance.

    A restarted daemon makes a new socket file (a new inode), so two workers compare equal
    only while they talk to the same daemon process.
    """
    st = os.stat(path)
    return f"{socket.gethostname()}:{st.st_dev}:{st.st_ino}:{instance_id}"


class WorkerStore:
    """One connection to a store, shared by everything of the integration in one process.

    Use :func:`attach` rather than the constructor.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path
        try:
            self.client = vineyard.connect(socket_path)
        except StoreUnavailable as exc:
            raise ConnectionFailedException(
                f"the Dask worker cannot reach its vineyard store at {socket_path}: {exc.message}. "
                "Start one with: python -m vineyard --socket " + socket_path
            ) from exc
        self.instance_id = self.client.instance_id
        self.identity = _identity(socket_path, self.instance_id)
        self.users = 0
        self._watched: dict[int, int] = {}  # object id -> garbage collections tried for it
        self._lock = threading.Lock()
        self._last_gc = 0.0
        self.stats = {"put": 0, "adopted": 0, "ids_sent": 0, "ids_received": 0, "deleted": 0}

    def __repr__(self) -> str:
        return f"WorkerStore({self.socket!r}, instance {self.instance_id})"

    # -- storing and reading -----------------------------------------------------------
    def put(self, value: Any, labels: dict[str, str]) -> tuple[ObjectID, Any]:
        """Store a task result: returns its id and the store-backed view that replaces it."""
        client = self.client
        object_id = client.put(value)
        try:
            client.label(object_id, {LABEL_SOURCE: SOURCE, **labels})
            view = client.get(object_id)
        except BaseException:
            client.delete(object_id, deep=True)
            raise
        register_view(view, Backing(object_id, self, managed=True))
        self.stats["put"] += 1
        return object_id, view

    def get(self, object_id: Any, managed: bool = False) -> Any:
        """A registered view of a stored object (``managed``: one the integration created)."""
        object_id = ObjectID(object_id)
        value = self.client.get(object_id)
        if not managed:
            self.unwatch(object_id)
        register_view(value, Backing(object_id, self, managed))
        return value

    def exists(self, object_id: ObjectID) -> bool:
        try:
            return self.client.exists(object_id)
        except StoreUnavailable:
            return False

    # -- lifetime ----------------------------------------------------------------------
    def release(self, object_id: ObjectID) -> None:
        """This process no longer needs managed ``object_id``: delete it if no one holds it."""
        try:
            (count,) = self.client.ref_counts([object_id])
        except StoreUnavailable:
            return  # the connection is gone, and with it this process's references
        if count is None:
            self.unwatch(object_id)
        elif count == 0:
            self._delete([int(object_id)])
        else:
            with self._lock:
                self._watched.setdefault(int(object_id), 0)

    def unwatch(self, object_id: ObjectID) -> None:
        with self._lock:
            self._watched.pop(int(object_id), None)

    @property
    def watched(self) -> set[ObjectID]:
        with self._lock:
            return {ObjectID(i) for i in self._watched}

    def sweep(self) -> int:
        """Delete watched objects nobody holds any more; returns how many were deleted.

        Views caught in reference cycles (pandas makes some) only die when the garbage
        collector runs: while watched objects stay held, a full collection runs at most once
        every :data:`GC_INTERVAL` seconds, and at most :data:`GC_TRIES` times per object (one
        still held after that is held by another process, which will delete it).
        """
        deleted = self._sweep_once()
        with self._lock:
            hopeful = [i for i, tries in self._watched.items() if tries < GC_TRIES]
        if hopeful and time.monotonic() - self._last_gc >= GC_INTERVAL:
            self._last_gc = time.monotonic()
            gc.collect()
            with self._lock:
                for i in hopeful:
                    if i in self._watched:
                        self._watched[i] += 1
            deleted += self._sweep_once()
        return deleted

    def _sweep_once(self) -> int:
        with self._lock:
            ids = sorted(self._watched)
        if not ids:
            return 0
        try:
            counts = self.client.ref_counts(ids)
        except StoreUnavailable:
            return 0
        gone = [i for i, c in zip(ids, counts, strict=True) if c is None]
        free = [i for i, c in zip(ids, counts, strict=True) if c == 0]
        with self._lock:
            for i in gone:
                self._watched.pop(i, None)
        return self._delete(free) if free else 0

    def _delete(self, ids: list[int]) -> int:
        try:
            kept = self.client.delete(ids, force=False, deep=True)
        except StoreUnavailable:
            return 0
        with self._lock:
            for i in ids:
                self._watched.pop(i, None)
        self.stats["deleted"] += len(ids) - len(kept)
        return len(ids) - len(kept)

    def sweep_worker(self, worker: str, min_age: float = SWEEP_MIN_AGE) -> int:
        """Delete the managed objects ``worker`` stored that no connection holds any more.

        The safety net for a worker that died without letting go of its keys: its connection
        closed, so its references are gone, but nobody was left to delete the objects.
        """
        return sweep_by_label(self.client, {LABEL_SOURCE: SOURCE, LABEL_WORKER: worker}, min_age)

    def close(self) -> None:
        """Close the connection, then delete what this process was the last to hold."""
        with self._lock:
            ids = sorted(self._watched)
            self._watched.clear()
        self.client.close()
        _forget_store(self)
        if not ids:
            return
        # Our own views may have kept these alive until now; closing dropped them.
        try:
            with vineyard.connect(self.socket) as client:
                counts = client.ref_counts(ids)
                free = [i for i, c in zip(ids, counts, strict=True) if c == 0]
                if free:
                    client.delete(free, force=False, deep=True)
        except StoreUnavailable:
            log.debug("the store at %s went away before the last objects were freed", self.socket)


def sweep_by_label(client: Any, labels: dict[str, str], min_age: float = SWEEP_MIN_AGE) -> int:
    """Delete transient objects carrying ``labels`` that no connection holds (older than
    ``min_age`` seconds). Persisted objects are never swept."""
    now_ms = time.time() * 1000
    candidates = []
    for meta in client.list_metadatas("*", limit=1 << 30, nobuffer=True):
        if not meta.transient or now_ms - meta.timestamp < min_age * 1000:
            continue
        found = meta.labels
        if all(found.get(k) == v for k, v in labels.items()):
            candidates.append(int(meta.id))
    if not candidates:
        return 0
    counts = client.ref_counts(candidates)
    free = [i for i, c in zip(candidates, counts, strict=True) if c == 0]
    if not free:
        return 0
    try:
        kept = client.delete(free, force=False, deep=True)
    except ObjectNotExistsException:
        return 0
    return len(free) - len(kept)


_stores: dict[str, WorkerStore] = {}
_stores_lock = threading.Lock()


def attach(socket_path: str | None = None) -> WorkerStore:
    """The process's :class:`WorkerStore` for ``socket_path`` (connecting on first use).

    Every ``attach`` must be paired with :func:`detach`.

    Raises
    ------
    ConnectionFailedException
        No socket configured, or no daemon answers on it.
    """
    path = resolve_socket(socket_path)
    key = os.path.realpath(path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None or not store.client.connected:
            store = WorkerStore(path)
            _stores[key] = store
        store.users += 1
    from vineyard.contrib.dask.serialize import register_serializers

    register_serializers()
    return store


def detach(store: WorkerStore) -> None:
    """Undo one :func:`attach`; the last one closes the connection."""
    with _stores_lock:
        store.users -= 1
        last = store.users <= 0
    if last:
        store.close()


def _forget_store(store: WorkerStore) -> None:
    with _stores_lock:
        for key, value in list(_stores.items()):
            if value is store:
                del _stores[key]


def find_store(identity: str | None = None) -> WorkerStore | None:
    """An attached store of this process: the one named ``identity``, or any if ``None``."""
    with _stores_lock:
        for store in _stores.values():
            if identity is None or store.identity == identity:
                return store
    return None
