"""Metadata backends: the revisioned key-value store that daemons share across hosts.

Two implementations share one contract (``tests/store/meta/test_contract.py``):

- :class:`~vineyard.store.meta.local.LocalBackend`, embedded and in-process (the default);
  several backends on one :class:`~vineyard.store.meta.local.LocalStore` behave like
  several daemons on one etcd, which is how the multi-daemon logic gets fast tests.
- :class:`~vineyard.store.meta.etcd.EtcdBackend`, a real etcd cluster reached through its v3
  JSON gateway with the standard library only, failing over between endpoints.

Semantics are etcd's: every write transaction gets the next revision; a watch from a
revision replays history in order and raises :class:`RevisionCompacted` once that history
is gone (the caller reloads with :meth:`MetaBackend.range`); keys written with a lease
vanish together, in one revision, when it expires or is revoked.

Key layout
----------
A backend is bound to ``prefix``, upstream's ``<etcd_prefix>/<session>`` (see
:func:`session_prefix`); keys passed to and returned by the backend are relative to it and
start with ``/``. The layout is upstream vineyard's; unlike upstream, whose backend has no
leases and one global lock, a daemon writes its own keys under its session lease so they go
when it dies, and uses compares instead of the global lock where keys are shared:

=====================================  ===================================================
``/instances/i<N>/<field>``            JSON values of instance N (``hostname``,
                                       ``rpc_endpoint``, ``ipc_socket`` ...); under N's lease
``/next_instance_id``                  JSON int, the next instance id; ids are never reused
``/data/o<16hex>``                     one JSON value per persisted object; owner's lease
``/data/o<16hex>/__name``              the object's name
``/signatures/i<N>/s<16hex>``          signature -> object id, per instance; N's lease
``/names/<name>``                      object id (JSON int)
``<lock name>/<lease hex>``            lock waiters and holder (etcd's Lock API layout)
``/barrier``                           written by :meth:`MetaBackend.barrier` only
=====================================  ===================================================

Threads
-------
Every method blocks and is safe to call from any thread. Watches deliver through
:meth:`Watch.get` (a queue); a daemon's event loop drains it after a wake-up, and
:class:`~vineyard.store.meta.session.Session` keeps a lease alive on its own thread.
"""

from __future__ import annotations

import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from vineyard.store.meta.model import (
    BARRIER_KEY,
    NEXT_INSTANCE_ID,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    LeaseExpired,
    MetaTimeout,
    Op,
    Put,
    Range,
    RevisionCompacted,
    TxnConflict,
    TxnResult,
    WatchClosed,
    as_bytes,
    data_key,
    instance_key,
    name_key,
    prefix_end,
    session_prefix,
    signature_key,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "BARRIER_KEY",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "Get",
    "KeyValue",
    "LeaseExpired",
    "MetaBackend",
    "MetaTimeout",
    "NEXT_INSTANCE_ID",
    "Op",
    "Put",
    "Range",
    "RevisionCompacted",
    "TxnConflict",
    "TxnResult",
    "Watch",
    "WatchClosed",
    "as_bytes",
    "data_key",
    "instance_key",
    "name_key",
    "open_backend",
    "prefix_end",
    "session_prefix",
    "signature_key",
]

# -- interfaces --------------------------------------------------------------------------


class Watch(ABC):
    """An ordered change feed of one key prefix, from a start revision.

    ``revision`` is the highest revision handed to the caller so far; a new watch from
    ``revision + 1`` continues exactly where this one stopped. Batches contain whole
    revisions (a transaction's events are never split) in revision order.
    """

    def __init__(self, prefix: str, revision: int) -> None:
        self.prefix = prefix
        self.revision = revision

    @abstractmethod
    def get(self, timeout: float | None = None) -> list[Event]:
        """The next batch of events, or ``[]`` if none came within ``timeout`` seconds.

        Raises
        ------
        RevisionCompacted
            History this watch still needed was compacted; reload and watch anew.
        WatchClosed
            After :meth:`close`.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop watching; a blocked :meth:`get` raises :class:`WatchClosed`. Idempotent."""

    def wait(self, revision: int, timeout: float) -> list[Event]:
        """Collect events until :attr:`revision` reaches ``revision``; the read barrier.

        Raises
        ------
        MetaTimeout
            It did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        while self.revision < revision:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MetaTimeout(
                    f"watch on {self.prefix!r} reached revision {self.revision}, "
                    f"not {revision}, within {timeout:g} s"
                )
            events.extend(self.get(left))
        return events

    def __iter__(self) -> Iterator[list[Event]]:
        """Batches until the watch is closed."""
        while True:
            try:
                yield self.get()
            except WatchClosed:
                return

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MetaBackend(ABC):
    """A revisioned key-value store with leases, transactions, watches and locks.

    Keys are relative to :attr:`prefix` (see the module docstring). Values are bytes;
    ``str`` is accepted and stored as UTF-8.
    """

    prefix: str

    # -- key-value -----------------------------------------------------------------------
    @abstractmethod
    def range(self, key: str, *, prefix: bool = True, revision: int = 0, limit: int = 0) -> Range:
        """Keys starting with ``key`` (or exactly ``key``), as of ``revision`` (0: now).

        Raises
        ------
        RevisionCompacted
            ``revision`` was compacted.
        """

    @abstractmethod
    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``.

        Raises
        ------
        LeaseExpired
            A put named a lease that no longer exists.
        EtcdErrorException
            The ops are invalid (e.g. two writes to one key), or the store is unreachable.
        """

    @abstractmethod
    def head_revision(self) -> int:
        """The store's current revision (of all prefixes, not only this one)."""

    @abstractmethod
    def compact(self, revision: int) -> None:
        """Drop history before ``revision``; watches that still need it get compacted.

        Raises
        ------
        RevisionCompacted
            ``revision`` is already compacted.
        """

    def get(self, key: str) -> KeyValue | None:
        kvs = self.range(key, prefix=False).kvs
        return kvs[0] if kvs else None

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Write one key; returns the revision of the write."""
        return self.txn((), [Put(key, value, lease)]).revision

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many keys went."""
        deleted = self.txn((), [Delete(key, prefix)]).responses[0]
        assert isinstance(deleted, int)
        return deleted

    def commit(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        """Run ``ops`` if every compare holds; returns the revision.

        Raises
        ------
        TxnConflict
            A compare failed; nothing was written.
        """
        result = self.txn(compares, ops)
        if not result.succeeded:
            raise TxnConflict(f"compare failed under {self.prefix!r}", result=result)
        return result.revision

    # -- leases --------------------------------------------------------------------------
    @abstractmethod
    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""

    @abstractmethod
    def keepalive(self, lease: int) -> int:
        """Restart the lease's TTL; returns the TTL.

        Raises
        ------
        LeaseExpired
            The lease is gone (expired or revoked) and its keys with it.
        """

    @abstractmethod
    def time_to_live(self, lease: int) -> int:
        """Whole seconds the lease has left (as etcd: truncated, so 0 in its last second),
        or -1 if it is gone."""

    @abstractmethod
    def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys in one revision. A gone lease is fine."""

    # -- watches and locks ---------------------------------------------------------------
    @abstractmethod
    def watch(self, key: str, start_revision: int = 0) -> Watch:
        """Watch keys under ``key`` from ``start_revision`` (0: changes after now).

        The watch is established when this returns: a write that follows is seen. If
        ``start_revision`` was compacted, the first :meth:`Watch.get` raises
        :class:`RevisionCompacted`.

        Raises
        ------
        EtcdErrorException
            The store cannot be reached.
        """

    @abstractmethod
    def lock(self, name: str, lease: int, timeout: float = 30.0) -> str:
        """Take the mutex ``name`` for ``lease``; returns the lock key, for :meth:`unlock`.

        The lock is held until unlocked or until the lease ends. Waiters are served in
        order of arrival.

        Raises
        ------
        MetaTimeout
            Not acquired within ``timeout`` seconds (the attempt is withdrawn).
        LeaseExpired
            The lease is gone.
        """

    def unlock(self, key: str) -> None:
        self.delete(key)

    @contextmanager
    def locked(self, name: str, lease: int, timeout: float = 30.0) -> Iterator[str]:
        key = self.lock(name, lease, timeout)
        try:
            yield key
        finally:
            self.unlock(key)

    @abstractmethod
    def close(self) -> None:
        """Release connections and watches (leases are left to expire or be revoked)."""

    # -- recipes on top of the primitives ------------------------------------------------
    def barrier(self, applied: int) -> int:
        """The revision a watch of this prefix must reach to include every write so far.

        ``applied`` is the revision the caller's watch has handled. If the store has not
        moved past it, that is the answer; otherwise, since the head revision may belong
        to another prefix that this watch never sees, a write to :data:`BARRIER_KEY` gives
        the watch an event at or after the head. Use with :meth:`Watch.wait`.
        """
        head = self.head_revision()
        if applied >= head:
            return head
        return self.put(BARRIER_KEY, b"")

    def register_instance(self, lease: int, fields: Mapping[str, Any], attempts: int = 1000) -> int:
        """Allocate a new instance id and write ``/instances/i<id>/<field>`` under ``lease``.

        The id comes from a compare-and-swap on :data:`NEXT_INSTANCE_ID`, so concurrent
        daemons get distinct ids and ids are never reused; fields are stored as JSON.

        Raises
        ------
        TxnConflict
            Still contended after ``attempts`` tries.
        LeaseExpired
            ``lease`` is gone.
        """
        current = self.get(NEXT_INSTANCE_ID)
        for attempt in range(attempts):
            rank = int(current.json()) if current is not None else 0
            mod = current.mod_revision if current is not None else 0
            ops: list[Op] = [Put(NEXT_INSTANCE_ID, json.dumps(rank + 1))]
            ops += [Put(instance_key(rank, k), json.dumps(v), lease) for k, v in fields.items()]
            result = self.txn([Compare.unchanged(NEXT_INSTANCE_ID, mod)], ops, [Get(NEXT_INSTANCE_ID)])
            if result.succeeded:
                return rank
            seen = result.responses[0]
            assert isinstance(seen, list)
            current = seen[0] if seen else None
            # Jitter spreads out daemons that keep colliding on the counter.
            time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
        raise TxnConflict(f"no instance id after {attempts} attempts under {self.prefix!r}")

    def instances(self) -> dict[int, dict[str, Any]]:
        """Every registered (live) instance: id -> fields."""
        out: dict[int, dict[str, Any]] = {}
        for kv in self.range("/instances/").kvs:
            rank, _, field = kv.key[len("/instances/i") :].partition("/")
            out.setdefault(int(rank), {})[field] = kv.json()
        return out

    def __enter__(self) -> MetaBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_backend(kind: str, prefix: str, *, endpoints: str = "", timeout: float = 5.0) -> MetaBackend:
    """The backend named by ``--meta``: ``local`` (a fresh embedded store) or ``etcd``.

    Raises
    ------
    ValueError
        An unknown kind, or ``etcd`` without endpoints.
    """
    if kind == "local":
        from vineyard.store.meta.local import LocalBackend, LocalStore

        return LocalBackend(LocalStore(), prefix, own_store=True)
    if kind == "etcd":
        if not endpoints:
            raise ValueError("--meta etcd needs --etcd-endpoints (or --etcd-launch)")
        from vineyard.store.meta.etcd import EtcdBackend

        return EtcdBackend(endpoints, prefix, timeout=timeout)
    raise ValueError(f"unknown metadata backend {kind!r}: expected 'local' or 'etcd'")
