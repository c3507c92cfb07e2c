"""The embedded backend: an in-process, revisioned key-value store with etcd's semantics.

Rules (the same as etcd's, so one contract suite covers both backends):
- Every transaction that changes something takes the next revision; reads and
  transactions that change nothing do not.
- History (each revision's events plus the values they replaced) is kept from
  ``compact_revision`` on; reads at older revisions and watches from them raise
  :class:`~vineyard.store.meta.RevisionCompacted`. At most ``history`` revisions are kept.
- A lease ends when ``clock()`` passes its deadline; its keys are deleted in one revision.
  Expiry is checked before every call and by a reaper thread, so watchers learn of it
  without other traffic; tests inject a manual clock.
- Blocking waits (locks, watches) use real time for their timeouts, whatever the clock.

Several :class:`LocalBackend` views of one :class:`LocalStore` behave like several daemons
sharing one etcd.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import (
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    LeaseExpired,
    MetaBackend,
    MetaTimeout,
    Op,
    Put,
    Range,
    RevisionCompacted,
    TxnResult,
    Watch,
    WatchClosed,
    as_bytes,
)

__all__ = ["LocalBackend", "LocalStore"]

# A watcher this many batches behind is cut off and told to reload, so a stalled consumer
# cannot grow the daemon's memory without bound.
_MAX_PENDING = 100_000


@dataclass(slots=True)
class _Lease:
    id: int
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


# One revision's changes: each event with the value it replaced (None: the key was new).
_Entry = tuple[int, list[tuple[Event, KeyValue | None]]]


class LocalStore:
    """The shared state behind :class:`LocalBackend` views; thread-safe.

    Parameters
    ----------
    clock
        Seconds, monotonic; leases expire by it. Tests pass a manual clock.
    history
        How many revisions of history to keep for watches and past reads.
    reaper_interval
        Seconds between expiry checks on the reaper thread; ``None`` disables it.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        history: int = 10_000,
        reaper_interval: float | None = 0.05,
    ) -> None:
        self.clock = clock
        self.history = history
        self.revision = 1  # etcd's first revision; nothing was ever written at it
        self.compact_revision = 0
        self._kv: dict[str, KeyValue] = {}
        self._log: deque[_Entry] = deque()
        self._leases: dict[int, _Lease] = {}
        self._watches: set[_LocalWatch] = set()
        self._mutex = threading.Lock()
        self.changed = threading.Condition(self._mutex)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        if reaper_interval is not None:
            self._reaper = threading.Thread(
                target=self._reap, args=(reaper_interval,), name="vineyard-meta-reaper", daemon=True
            )
            self._reaper.start()

    def _reap(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.expire()

    def close(self) -> None:
        """Stop the reaper thread (the data stays readable)."""
        self._stop.set()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join()

    # -- reads ---------------------------------------------------------------------------
    def range(self, key: str, prefix: bool, revision: int, limit: int) -> Range:
        with self._mutex:
            self._expire_locked()
            if revision <= 0 or revision >= self.revision:
                if revision > self.revision:
                    raise EtcdErrorException("mvcc: required revision is a future revision")
                view = {k: v for k, v in self._kv.items() if _matches(k, key, prefix)}
                at = self.revision
            else:
                view = self._view_at(key, prefix, revision)
                at = revision
        kvs = [view[k] for k in sorted(view)]
        return Range(kvs[:limit] if limit > 0 else kvs, at)

    def _view_at(self, key: str, prefix: bool, revision: int) -> dict[str, KeyValue]:
        if revision < self.compact_revision:
            raise RevisionCompacted(
                f"revision {revision} was compacted (oldest is {self.compact_revision})",
                compact_revision=self.compact_revision,
            )
        view = {k: v for k, v in self._kv.items() if _matches(k, key, prefix)}
        for rev, changes in reversed(self._log):
            if rev <= revision:
                break
            for event, previous in reversed(changes):
                if not _matches(event.key, key, prefix):
                    continue
                if previous is None:
                    view.pop(event.key, None)
                else:
                    view[event.key] = previous
        return view

    # -- writes --------------------------------------------------------------------------
    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> TxnResult:
        with self._mutex:
            self._expire_locked()
            ok = all(self._holds(c) for c in compares)
            ops = success if ok else failure
            _check_ops(ops)
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseExpired(f"requested lease {op.lease:x} not found", lease=op.lease)
            rev = self.revision + 1
            changes: list[tuple[Event, KeyValue | None]] = []
            responses: list[list[KeyValue] | int | None] = []
            for op in ops:
                if isinstance(op, Get):
                    responses.append([self._kv[k] for k in sorted(self._kv) if _matches(k, op.key, op.prefix)])
                elif isinstance(op, Put):
                    changes.append(self._put_locked(op, rev))
                    responses.append(None)
                else:
                    doomed = sorted(k for k in self._kv if _matches(k, op.key, op.prefix))
                    changes.extend(self._delete_locked(k, rev) for k in doomed)
                    responses.append(len(doomed))
            if changes:
                self._commit_locked(rev, changes)
            return TxnResult(ok, self.revision, responses)

    def _holds(self, compare: Compare) -> bool:
        kv = self._kv.get(compare.key)
        actual: int | bytes
        operand: int | bytes
        if compare.target == "value":
            if kv is None:
                return False  # as etcd: a value compare on a missing key never holds
            actual, operand = kv.value, as_bytes(compare.operand)  # type: ignore[arg-type]
        else:
            if kv is None:
                actual = 0
            else:
                actual = {
                    "version": kv.version,
                    "create": kv.create_revision,
                    "mod": kv.mod_revision,
                    "lease": kv.lease,
                }[compare.target]
            operand = int(compare.operand)  # type: ignore[arg-type]
        if compare.op == "==":
            return actual == operand
        if compare.op == "!=":
            return actual != operand
        if compare.op == "<":
            return actual < operand  # type: ignore[operator]
        return actual > operand  # type: ignore[operator]

    def _put_locked(self, op: Put, rev: int) -> tuple[Event, KeyValue | None]:
        previous = self._kv.get(op.key)
        if previous is not None and previous.lease and previous.lease in self._leases:
            self._leases[previous.lease].keys.discard(op.key)
        if previous is None:
            kv = KeyValue(op.key, as_bytes(op.value), rev, rev, 1, op.lease)
        else:
            kv = replace(
                previous, value=as_bytes(op.value), mod_revision=rev, version=previous.version + 1, lease=op.lease
            )
        self._kv[op.key] = kv
        if op.lease:
            self._leases[op.lease].keys.add(op.key)
        return Event(EventType.PUT, kv), previous

    def _delete_locked(self, key: str, rev: int) -> tuple[Event, KeyValue | None]:
        previous = self._kv.pop(key)
        if previous.lease and previous.lease in self._leases:
            self._leases[previous.lease].keys.discard(key)
        return Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0)), previous

    def _commit_locked(self, rev: int, changes: list[tuple[Event, KeyValue | None]]) -> None:
        self.revision = rev
        self._log.append((rev, changes))
        while len(self._log) > self.history:
            self._log.popleft()
            self.compact_revision = self._log[0][0]
        events = [event for event, _ in changes]
        for watch in list(self._watches):
            watch.deliver(events)
        self.changed.notify_all()

    def compact(self, revision: int) -> None:
        with self._mutex:
            if revision <= self.compact_revision:
                raise RevisionCompacted(
                    f"revision {revision} is already compacted", compact_revision=self.compact_revision
                )
            if revision > self.revision:
                raise EtcdErrorException("mvcc: required revision is a future revision")
            self.compact_revision = revision
            while self._log and self._log[0][0] < revision:
                self._log.popleft()

    # -- leases --------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        with self._mutex:
            self._expire_locked()
            lease_id = random.getrandbits(63) or 1
            while lease_id in self._leases:
                lease_id = random.getrandbits(63) or 1
            self._leases[lease_id] = _Lease(lease_id, ttl, self.clock() + ttl)
            return lease_id

    def keepalive(self, lease_id: int) -> int:
        with self._mutex:
            self._expire_locked()
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseExpired(f"lease {lease_id:x} has expired or was revoked", lease=lease_id)
            lease.deadline = self.clock() + lease.ttl
            return lease.ttl

    def time_to_live(self, lease_id: int) -> int:
        with self._mutex:
            self._expire_locked()
            lease = self._leases.get(lease_id)
            if lease is None:
                return -1
            return max(0, math.floor(lease.deadline - self.clock()))

    def revoke(self, lease_id: int) -> None:
        with self._mutex:
            self._revoke_locked(lease_id)

    def _revoke_locked(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return
        rev = self.revision + 1
        changes = [self._delete_locked(k, rev) for k in sorted(lease.keys) if k in self._kv]
        if changes:
            self._commit_locked(rev, changes)

    def expire(self) -> None:
        """End every lease whose deadline has passed (one revision per lease)."""
        with self._mutex:
            self._expire_locked()

    def _expire_locked(self) -> None:
        now = self.clock()
        for lease in [x for x in self._leases.values() if x.deadline <= now]:
            self._revoke_locked(lease.id)

    def head(self) -> int:
        with self._mutex:
            self._expire_locked()
            return self.revision

    def wait_first(self, prefix: str, key: str, timeout: float) -> bool:
        """Wait until ``key`` has the lowest create revision under ``prefix`` (a lock).

        Returns False on timeout.

        Raises
        ------
        LeaseExpired
            ``key`` vanished while waiting: its lease ended.
        """
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                self._expire_locked()
                kv = self._kv.get(key)
                if kv is None:
                    raise LeaseExpired(f"{key!r} vanished while waiting for its lock: its lease ended")
                mine = kv.create_revision
                if not any(k.startswith(prefix) and v.create_revision < mine for k, v in self._kv.items()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Wake up now and then: with a manual clock, expiry needs a re-check.
                self.changed.wait(min(left, 0.05))

    # -- watches -------------------------------------------------------------------------
    def watch(self, prefix: str, strip: int, start_revision: int) -> _LocalWatch:
        with self._mutex:
            self._expire_locked()
            start = start_revision if start_revision > 0 else self.revision + 1
            watch = _LocalWatch(self, prefix, strip, start - 1)
            if start < self.compact_revision:
                watch.fail(
                    RevisionCompacted(
                        f"watch from revision {start} of {prefix!r}: compacted up to {self.compact_revision}",
                        compact_revision=self.compact_revision,
                    )
                )
                return watch
            for rev, changes in self._log:
                if rev >= start:
                    watch.deliver([event for event, _ in changes])
            self._watches.add(watch)
            return watch

    def unwatch(self, watch: _LocalWatch) -> None:
        with self._mutex:
            self._watches.discard(watch)


def _matches(key: str, wanted: str, prefix: bool) -> bool:
    return key.startswith(wanted) if prefix else key == wanted


def _check_ops(ops: Sequence[Op]) -> None:
    """etcd refuses a transaction that writes one key twice; so do we, to stay portable."""
    puts: set[str] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts:
                raise EtcdErrorException("duplicate key given in txn request")
            puts.add(op.key)
    for op in ops:
        if isinstance(op, Delete) and any(_matches(k, op.key, op.prefix) for k in puts):
            raise EtcdErrorException("duplicate key given in txn request")


class _LocalWatch(Watch):
    def __init__(self, store: LocalStore, prefix: str, strip: int, revision: int) -> None:
        super().__init__(prefix[strip:], revision)
        self._store = store
        self._full_prefix = prefix
        self._strip = strip
        self._queue: queue.SimpleQueue[list[Event] | BaseException] = queue.SimpleQueue()
        self._failed: BaseException | None = None
        self._closed = False

    def deliver(self, events: list[Event]) -> None:
        """Called with the store's lock held, in revision order."""
        mine = [self._relative(e) for e in events if e.key.startswith(self._full_prefix)]
        if not mine or self._failed is not None:
            return
        if self._queue.qsize() >= _MAX_PENDING:
            self._store._watches.discard(self)
            self.fail(
                RevisionCompacted(
                    f"watch on {self.prefix!r} fell {_MAX_PENDING} batches behind; reload",
                    compact_revision=mine[0].revision,
                )
            )
            return
        self._queue.put(mine)

    def _relative(self, event: Event) -> Event:
        return Event(event.type, replace(event.kv, key=event.key[self._strip :]))

    def fail(self, exc: BaseException) -> None:
        self._failed = exc
        self._queue.put(exc)

    def get(self, timeout: float | None = None) -> list[Event]:
        if self._closed:
            raise WatchClosed(f"watch on {self.prefix!r} is closed")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, BaseException):
            self._queue.put(item)  # sticky: every later get reports it too
            raise item
        self.revision = item[-1].revision
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._store.unwatch(self)
            self._queue.put(WatchClosed(f"watch on {self.prefix!r} is closed"))


class LocalBackend(MetaBackend):
    """A :class:`~vineyard.store.meta.MetaBackend` view of a :class:`LocalStore` under ``prefix``.

    Parameters
    ----------
    store
        The shared store; backends on one store see each other's writes.
    prefix
        Upstream's ``<etcd_prefix>/<session>``; keys are relative to it.
    own_store
        Close ``store`` (its reaper thread) when this backend closes.
    """

    def __init__(self, store: LocalStore, prefix: str, *, own_store: bool = False) -> None:
        self.store = store
        self.prefix = prefix
        self._own_store = own_store
        self._watches: list[_LocalWatch] = []
        self._closed = False

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _op(self, op: Op) -> Op:
        return replace(op, key=self._full(op.key))

    def _relative(self, kv: KeyValue) -> KeyValue:
        return replace(kv, key=kv.key[len(self.prefix) :])

    def range(self, key: str, *, prefix: bool = True, revision: int = 0, limit: int = 0) -> Range:
        kvs, at = self.store.range(self._full(key), prefix, revision, limit)
        return Range([self._relative(kv) for kv in kvs], at)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        result = self.store.txn(
            [replace(c, key=self._full(c.key)) for c in compares],
            [self._op(op) for op in success],
            [self._op(op) for op in failure],
        )
        responses = [
            [self._relative(kv) for kv in r] if isinstance(r, list) else r for r in result.responses
        ]
        return TxnResult(result.succeeded, result.revision, responses)

    def head_revision(self) -> int:
        return self.store.head()

    def compact(self, revision: int) -> None:
        self.store.compact(revision)

    def grant(self, ttl: int) -> int:
        return self.store.grant(ttl)

    def keepalive(self, lease: int) -> int:
        return self.store.keepalive(lease)

    def time_to_live(self, lease: int) -> int:
        return self.store.time_to_live(lease)

    def revoke(self, lease: int) -> None:
        self.store.revoke(lease)

    def watch(self, key: str, start_revision: int = 0) -> Watch:
        watch = self.store.watch(self._full(key), len(self.prefix), start_revision)
        self._watches.append(watch)
        return watch

    def lock(self, name: str, lease: int, timeout: float = 30.0) -> str:
        # etcd's Lock API layout: waiters put "<name>/<lease hex>" under their lease and
        # the lowest create revision holds the lock.
        mine = f"{name}/{lease:x}"
        self.txn([Compare.absent(mine)], [Put(mine, b"", lease)])
        if self.store.wait_first(self._full(name + "/"), self._full(mine), timeout):
            return mine
        self.delete(mine)
        raise MetaTimeout(f"lock {name!r} not acquired within {timeout:g} s")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for watch in self._watches:
                watch.close()
            self._watches.clear()
            if self._own_store:
                self.store.close()
