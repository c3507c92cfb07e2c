"""``VineyardRef``: an object in a vineyard store, passed between Ray tasks by ID.

A reference pickles to its object ID, the store's socket path and the store's host — about
a hundred bytes — so ``task.remote(ref)`` inlines it in the task spec and nothing goes
through Ray's object store. The task calls ``ref.get()`` and receives read-only views of
the store's shared memory: the producer's pages, not a copy.

Unlike a Ray ``ObjectRef``, a reference does not keep its object alive and going out of
scope does not free it: see :mod:`vineyard.contrib.ray.lifetime` for who deletes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vineyard.contrib.ray import lifetime
from vineyard.contrib.ray.stores import client_for, default_socket, drop_client, local_host
from vineyard.errors import ObjectNotExistsException, StoreUnavailable
from vineyard.ids import ObjectID

if TYPE_CHECKING:
    from vineyard.client import Client
    from vineyard.meta import ObjectMeta

__all__ = ["ObjectNotLocal", "VineyardRef", "delete", "get", "put"]


class ObjectNotLocal(ObjectNotExistsException):
    """The object lives in a store on another host, which this process cannot map."""


class VineyardRef:
    """An object in a vineyard store: its ID, the store's socket path and the store's host.

    Parameters
    ----------
    object_id
        The object's ID (``ObjectID``, int or ``"o…"`` string).
    socket
        The store's UNIX socket; default ``$VINEYARD_IPC_SOCKET``.
    host
        The host the store runs on; default this host.
    """

    __slots__ = ("host", "object_id", "socket")

    def __init__(self, object_id: Any, socket: str | None = None, host: str | None = None) -> None:
        self.object_id = ObjectID(object_id)
        self.socket = default_socket(socket)
        self.host = host or local_host()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (int(self.object_id), self.socket, self.host))

    def __repr__(self) -> str:
        return f"VineyardRef({self.object_id!r} in {self.socket} on {self.host})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VineyardRef):
            return NotImplemented
        return (self.object_id, self.socket, self.host) == (other.object_id, other.socket, other.host)

    def __hash__(self) -> int:
        return hash((int(self.object_id), self.socket, self.host))

    # -- reading -----------------------------------------------------------------------
    @property
    def client(self) -> Client:
        """This process's connection to the store holding the object.

        Raises
        ------
        ObjectNotLocal
            The store runs on another host and its socket is not reachable from here.
        ConnectionFailedException
            The store on this host is down (the message names the socket).
        """
        try:
            return client_for(self.socket)
        except StoreUnavailable as exc:
            if self.host != local_host():
                raise self._not_local() from exc
            raise

    def get(self, **kwargs: Any) -> Any:
        """The object's value; DataFrames, arrays and Arrow tables are zero-copy views.

        Raises
        ------
        ObjectNotExistsException
            The object was deleted (the message names it and the store).
        ObjectNotLocal
            The object lives in a store on another host.
        ConnectionFailedException
            The store is down (the message names the socket).
        """
        return self._call(lambda client: client.get(self.object_id, **kwargs))

    def get_meta(self) -> ObjectMeta:
        """The object's metadata (no data is mapped).

        Raises
        ------
        ObjectNotExistsException, ObjectNotLocal, ConnectionFailedException
            As :meth:`get`.
        """
        return self._call(lambda client: client.get_meta(self.object_id))  # type: ignore[no-any-return]

    def exists(self) -> bool:
        """Whether the store still holds the object."""
        return bool(self._call(lambda client: client.exists(self.object_id)))

    # -- lifetime ----------------------------------------------------------------------
    def delete(self) -> None:
        """Delete the object now (deep: members nobody else holds go too).

        Readers that already mapped it keep their views; the memory is freed after them.
        Deleting an object that is already gone is not an error.
        """
        self._call(lambda client: client.delete(self.object_id, deep=True))

    def persist(self) -> None:
        """Keep the object after the Ray job that created it ends."""

        def persist(client: Client) -> None:
            client.persist(self.object_id)
            client.label(self.object_id, {lifetime.LABEL_PERSIST: "user"})

        self._call(persist)

    def __enter__(self) -> VineyardRef:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # -- helpers -----------------------------------------------------------------------
    def _call(self, operation: Any) -> Any:
        """Run ``operation(client)``; reconnect once if the daemon dropped the connection,
        and turn "no such object" into an error naming the object, store and host."""
        for attempt in (0, 1):
            client = self.client
            try:
                return operation(client)
            except ObjectNotExistsException as exc:
                if self.host != local_host():
                    raise self._not_local() from exc
                raise ObjectNotExistsException(
                    f"{self.object_id!r} is not in the vineyard store at {self.socket}: it was "
                    "deleted, or the Ray job that created it has ended",
                    object_id=int(self.object_id),
                    socket=self.socket,
                ) from exc
            except StoreUnavailable:
                drop_client(self.socket)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _not_local(self) -> ObjectNotLocal:
        return ObjectNotLocal(
            f"{self.object_id!r} lives in the vineyard store at {self.socket} on host {self.host}, "
            f"but this process runs on {local_host()}: run the task on that node "
            "(e.g. NodeAffinitySchedulingStrategy) or copy the object",
            object_id=int(self.object_id),
            socket=self.socket,
            host=self.host,
        )


def _restore(object_id: int, socket: str, host: str) -> VineyardRef:
    ref = VineyardRef.__new__(VineyardRef)
    ref.object_id, ref.socket, ref.host = ObjectID(object_id), socket, host
    # A reference arriving at the driver (a task's return value) tells it which store holds
    # objects of its job, so it can delete them when the job ends.
    lifetime.note_store(socket)
    return ref


def put(value: Any, *, socket: str | None = None, persist: bool = False, name: str | None = None,
        labels: dict[str, str] | None = None) -> VineyardRef:
    """Store ``value`` in the local vineyard store and return a reference to it.

    Parameters
    ----------
    value
        Anything the store has a builder for: pandas, numpy and Arrow values are stored as
        columns and come back zero-copy; other objects go through the pickle fallback.
    socket
        The store's socket; default ``$VINEYARD_IPC_SOCKET``.
    persist
        Keep the object after the Ray job ends (it is deleted with the job otherwise).
    name
        A name for the object (needs ``persist=True``).
    labels
        Extra labels to put on the object.

    Raises
    ------
    ConnectionFailedException
        No store at the socket (the message names it).
    NotEnoughMemoryException
        The store is full.
    """
    path = default_socket(socket)
    client = client_for(path)
    try:
        object_id = client.put(value, persist=persist, name=name)
    except StoreUnavailable:
        drop_client(path)
        raise
    if labels:
        client.label(object_id, labels)
    lifetime.label_new_object(client, object_id, path, persist=persist)
    return VineyardRef(object_id, path, local_host())


def get(refs: Any, *, socket: str | None = None, **kwargs: Any) -> Any:
    """The value of a reference, an object ID (in the store at ``socket``), or a list of them.

    Raises
    ------
    ObjectNotExistsException, ObjectNotLocal, ConnectionFailedException
        As :meth:`VineyardRef.get`.
    """
    if isinstance(refs, (list, tuple)):
        return [_as_ref(r, socket).get(**kwargs) for r in refs]
    return _as_ref(refs, socket).get(**kwargs)


def delete(refs: VineyardRef | Iterable[VineyardRef]) -> None:
    """Delete one or several referenced objects now."""
    for ref in [refs] if isinstance(refs, VineyardRef) else refs:
        ref.delete()


def _as_ref(value: Any, socket: str | None) -> VineyardRef:
    return value if isinstance(value, VineyardRef) else VineyardRef(value, socket)
