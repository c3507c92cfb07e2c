"""The metadata backend contract: every test runs on the embedded store and on a real etcd.

Time never enters an assertion: lease time passes through ``harness.elapse`` (a manual
clock for ``local``, real seconds for ``etcd``) and effects are awaited by polling.
"""

from __future__ import annotations

import json
import threading

import pytest

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import (
    BARRIER_KEY,
    NEXT_INSTANCE_ID,
    Compare,
    Delete,
    EventType,
    Get,
    LeaseExpired,
    MetaTimeout,
    Put,
    RevisionCompacted,
    TxnConflict,
    WatchClosed,
    instance_key,
)
from vineyard.store.meta.session import Session

# -- key-value -------------------------------------------------------------------------


def test_put_get_delete_track_revisions(harness):
    b = harness.backend()
    r1 = b.put("/data/a", b"1")
    r2 = b.put("/data/a", "2")
    assert r2 == r1 + 1
    kv = b.get("/data/a")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", r1, r2, 2)
    assert b.get("/data/missing") is None
    assert b.delete("/data/a") == 1
    assert b.delete("/data/a") == 0
    assert b.get("/data/a") is None
    assert b.head_revision() == r2 + 1  # deleting nothing took no revision


def test_prefix_range_is_ordered_isolated_and_revisioned(harness):
    b = harness.backend()
    other = harness.backend(harness.prefix + "x")  # a neighbour whose prefix extends ours
    for key in ("/data/o2", "/data/o1", "/names/n", "/data/o3"):
        b.put(key, key)
    other.put("/data/o1", "not ours")
    before = b.head_revision()
    b.put("/data/o1", "changed")
    b.delete("/data/o3")

    now = b.range("/data/")
    assert [kv.key for kv in now.kvs] == ["/data/o1", "/data/o2"]
    assert now.revision == b.head_revision()
    assert [kv.key for kv in b.range("/data/", limit=1).kvs] == ["/data/o1"]
    assert [kv.key for kv in b.range("/data/o1", prefix=False).kvs] == ["/data/o1"]
    assert [kv.key for kv in other.range("/").kvs] == ["/data/o1"]

    past = b.range("/data/", revision=before)
    assert past.revision == before
    assert {kv.key: kv.value for kv in past.kvs} == {
        "/data/o1": b"/data/o1",
        "/data/o2": b"/data/o2",
        "/data/o3": b"/data/o3",
    }


def test_compare_and_swap(harness):
    b = harness.backend()
    first = b.put("/names/x", "1")
    rev = b.commit([Compare.unchanged("/names/x", first)], [Put("/names/x", "2")])
    with pytest.raises(TxnConflict):
        b.commit([Compare.unchanged("/names/x", first)], [Put("/names/x", "3")])
    assert b.get("/names/x").value == b"2"
    assert b.get("/names/x").mod_revision == rev

    b.commit([Compare.absent("/names/y")], [Put("/names/y", "new")])
    with pytest.raises(TxnConflict):
        b.commit([Compare.absent("/names/y")], [Put("/names/y", "overwrite")])
    b.commit([Compare.value_is("/names/y", "new")], [Put("/names/y", "swapped")])
    assert b.get("/names/y").value == b"swapped"
    # As etcd: a value compare on a missing key never holds; unchanged(key, 0) means absent.
    with pytest.raises(TxnConflict):
        b.commit([Compare("/names/none", "value", "!=", b"x")], [Put("/names/none", "1")])
    b.commit([Compare.unchanged("/names/none", 0)], [Put("/names/none", "1")])


def test_txn_is_atomic_and_reports_the_failure_branch(harness):
    b = harness.backend()
    b.put("/data/a", "1")
    b.put("/data/b", "1")
    head = b.head_revision()
    result = b.txn(
        [Compare.value_is("/data/a", "1"), Compare.value_is("/data/b", "2")],
        [Put("/data/a", "x"), Delete("/data/b")],
        [Get("/data/", prefix=True), Get("/data/zzz")],
    )
    assert not result.succeeded
    assert [kv.key for kv in result.responses[0]] == ["/data/a", "/data/b"]
    assert result.responses[1] == []
    assert b.head_revision() == head  # nothing was written

    result = b.txn(
        [Compare.value_is("/data/a", "1"), Compare("/data/b", "version", ">", 0)],
        [Put("/data/a", "x"), Delete("/data/", prefix=False), Delete("/data/b"), Get("/data/a")],
    )
    assert result.succeeded
    assert result.revision == head + 1  # one transaction, one revision
    assert result.responses[:3] == [None, 0, 1]
    assert result.responses[3][0].value == b"x"
    with pytest.raises(EtcdErrorException, match="duplicate key"):
        b.txn([], [Put("/data/c", "1"), Put("/data/c", "2")])


def test_concurrent_compare_and_swap_loses_no_update(harness):
    backends = [harness.backend() for _ in range(4)]
    backends[0].put("/counter", "0")

    def bump(b, times):
        for _ in range(times):
            while True:
                kv = b.get("/counter")
                bumped = Put("/counter", str(int(kv.value) + 1))
                try:
                    b.commit([Compare.unchanged("/counter", kv.mod_revision)], [bumped])
                    break
                except TxnConflict:
                    continue

    threads = [threading.Thread(target=bump, args=(b, 10)) for b in backends for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backends[0].get("/counter").value == b"80"


# -- registration and leases -----------------------------------------------------------


def test_registration_gives_unique_ids_under_concurrency(harness):
    daemons = [harness.backend() for _ in range(12)]
    leases = [d.grant(30) for d in daemons]
    ids: dict[int, int] = {}  # daemon index -> instance id
    errors: list[BaseException] = []

    def register(i):
        try:
            ids[i] = daemons[i].register_instance(leases[i], {"hostname": f"h{i}", "rpc_endpoint": f"x:{i}"})
        except BaseException as exc:  # reported below; a thread must not swallow it
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(len(daemons))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ids.values()) == list(range(12))
    assert daemons[0].get(NEXT_INSTANCE_ID).json() == 12
    instances = daemons[0].instances()
    assert {rank: fields["hostname"] for rank, fields in instances.items()} == {ids[i]: f"h{i}" for i in ids}
    assert daemons[0].get(instance_key(ids[3], "hostname")).lease == leases[3]

    # A daemon that leaves takes its entry with it; its id is never handed out again.
    daemons[3].revoke(leases[3])
    assert ids[3] not in daemons[0].instances()
    assert daemons[1].register_instance(leases[1], {"hostname": "again"}) == 12
    assert daemons[2].register_instance(leases[2], {"hostname": "again"}) == 13
    for d, lease in zip(daemons, leases, strict=True):
        d.revoke(lease)
    assert daemons[0].instances() == {}


def test_lease_expiry_removes_its_keys_and_notifies_the_holder(harness, wait_for):
    b = harness.backend()
    observer = harness.backend()
    lost: list[str] = []
    # interval > ttl: the holder stalls (as a stopped daemon would) and finds out afterwards
    session = Session(b, ttl=1, interval=2.0, on_lost=lost.append)
    rank = b.register_instance(session.lease, {"hostname": "doomed"})
    b.put("/data/o1", "{}", lease=session.lease)
    b.put("/names/keep", "1")
    watch = observer.watch("/")

    harness.elapse(1.5)
    wait_for(lambda: observer.get("/data/o1") is None, what="the lease's keys to vanish")
    assert rank not in observer.instances()
    assert observer.get("/names/keep") is not None
    assert observer.time_to_live(session.lease) == -1
    with pytest.raises(LeaseExpired):
        observer.keepalive(session.lease)
    with pytest.raises(LeaseExpired):
        observer.put("/data/o2", "{}", lease=session.lease)

    events = watch.wait(observer.head_revision(), timeout=10)
    deletes = [e for e in events if e.type is EventType.DELETE]
    assert {e.key for e in deletes} == {"/data/o1", instance_key(rank, "hostname")}
    assert len({e.revision for e in deletes}) == 1  # all keys of the lease went at once

    wait_for(session.lost.is_set, what="the holder to learn it lost its lease")
    assert len(lost) == 1
    assert "gone" in lost[0]
    with pytest.raises(LeaseExpired):
        session.check()
    session.close()
    watch.close()


def test_keepalive_prevents_expiry(harness, wait_for):
    b = harness.backend()
    session = Session(b, ttl=1)
    b.put("/data/o1", "{}", lease=session.lease)
    for _ in range(4):  # 2 s of lease time in all, twice the TTL
        count = session.keepalives
        wait_for(lambda c=count: session.keepalives > c, what="a keep-alive")
        harness.elapse(0.5)
    assert not session.lost.is_set()
    assert b.get("/data/o1") is not None
    assert b.time_to_live(session.lease) >= 0
    session.check()
    session.close()  # a clean shutdown revokes at once
    assert b.get("/data/o1") is None
    assert b.time_to_live(session.lease) == -1


# -- watches ---------------------------------------------------------------------------


def test_watch_delivers_puts_and_deletes_in_order(harness):
    b = harness.backend()
    writer = harness.backend()
    outsider = harness.backend(harness.prefix + "-other")
    watch = b.watch("/data/")
    start = watch.revision
    writer.put("/data/a", "1")
    outsider.put("/data/a", "elsewhere")
    writer.put("/names/n", "not watched")
    both = writer.commit([], [Put("/data/b", "2"), Put("/data/a", "3")])
    writer.delete("/data/", prefix=True)
    last = writer.head_revision()

    events = watch.wait(last, timeout=10)
    seen = [(e.type, e.key, e.kv.value) for e in events]
    assert seen == [
        (EventType.PUT, "/data/a", b"1"),
        (EventType.PUT, "/data/b", b"2"),
        (EventType.PUT, "/data/a", b"3"),
        (EventType.DELETE, "/data/a", b""),
        (EventType.DELETE, "/data/b", b""),
    ]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions)
    assert revisions[0] > start
    assert revisions[1] == revisions[2] == both
    assert watch.revision == last
    watch.close()
    with pytest.raises(WatchClosed):
        watch.get(0.1)


def test_watch_resumes_from_a_revision_after_reconnecting(harness):
    b = harness.backend()
    writer = harness.backend()
    first = writer.put("/data/a", "1")
    watch = b.watch("/data/", start_revision=first)  # replays history from `first`
    assert [e.key for e in watch.wait(first, timeout=10)] == ["/data/a"]
    seen_up_to = watch.revision
    watch.close()  # the watcher disconnects; writes go on meanwhile

    writer.put("/data/b", "2")
    writer.delete("/data/a")
    writer.put("/data/c", "3")
    resumed = b.watch("/data/", start_revision=seen_up_to + 1)
    events = resumed.wait(writer.head_revision(), timeout=10)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "/data/b"),
        (EventType.DELETE, "/data/a"),
        (EventType.PUT, "/data/c"),
    ]
    resumed.close()


def test_compaction_tells_the_watcher_to_reload(harness):
    b = harness.backend()
    old = b.put("/data/a", "1")
    b.put("/data/a", "2")
    b.put("/data/b", "1")
    head = b.head_revision()
    b.compact(head)

    watch = b.watch("/data/", start_revision=old)
    with pytest.raises(RevisionCompacted) as info:
        watch.get(timeout=10)
    assert info.value.compact_revision >= old
    with pytest.raises(RevisionCompacted):
        watch.get(timeout=0.1)  # it stays compacted
    watch.close()
    with pytest.raises(RevisionCompacted):
        b.range("/data/", revision=old)
    with pytest.raises(RevisionCompacted):
        b.compact(old)

    reload = b.range("/data/")  # the recovery: a fresh range, then watch from after it
    assert {kv.key: kv.value for kv in reload.kvs} == {"/data/a": b"2", "/data/b": b"1"}
    fresh = b.watch("/data/", start_revision=reload.revision + 1)
    b.put("/data/c", "1")
    assert [e.key for e in fresh.wait(b.head_revision(), timeout=10)] == ["/data/c"]
    fresh.close()


def test_barrier_gives_read_your_writes_across_daemons(harness):
    reader = harness.backend()
    writer = harness.backend()
    neighbour = harness.backend(harness.prefix + "-other")
    watch = reader.watch("/")

    # Caught up: no write needed.
    head = reader.head_revision()
    assert reader.barrier(watch.revision) == head
    assert reader.get(BARRIER_KEY) is None

    written = writer.put("/data/o1", "{}")
    neighbour.put("/data/x", "moves the head past anything this watch will see")
    point = reader.barrier(watch.revision)
    assert point > written
    events = watch.wait(point, timeout=10)
    assert "/data/o1" in [e.key for e in events]
    assert watch.revision >= point
    watch.close()


# -- locks -----------------------------------------------------------------------------


def test_lock_is_mutually_exclusive(harness):
    inside = 0
    most = 0
    total = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker(b):
        nonlocal inside, most, total
        lease = b.grant(30)
        try:
            for _ in range(5):
                with b.locked("/locks/persist", lease, timeout=30):
                    with guard:
                        inside += 1
                        most = max(most, inside)
                    value = total
                    threading.Event().wait(0.002)  # widen the window a broken lock would show
                    total = value + 1
                    with guard:
                        inside -= 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            b.revoke(lease)

    threads = [threading.Thread(target=worker, args=(harness.backend(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert most == 1
    assert total == 20


def test_lock_times_out_and_is_released_when_the_holder_expires(harness, wait_for):
    holder = harness.backend()
    waiter = harness.backend()
    short = holder.grant(1)
    long = waiter.grant(60)
    key = holder.lock("/locks/l", short)
    assert key.startswith("/locks/l/")
    with pytest.raises(MetaTimeout):
        waiter.lock("/locks/l", long, timeout=0.3)
    assert [kv.key for kv in waiter.range("/locks/l/").kvs] == [key]  # the attempt was withdrawn

    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(waiter.lock("/locks/l", long, timeout=30)))
    thread.start()
    wait_for(lambda: len(waiter.range("/locks/l/").kvs) == 2, what="the waiter to queue")
    assert got == []  # still held
    harness.elapse(1.5)  # the holder never renews its lease
    thread.join(timeout=30)
    assert len(got) == 1
    assert got[0] != key
    assert [kv.key for kv in waiter.range("/locks/l/").kvs] == got
    waiter.unlock(got[0])
    assert waiter.range("/locks/l/").kvs == []
    with pytest.raises(LeaseExpired):
        holder.lock("/locks/l", short, timeout=1)
    waiter.revoke(long)


def test_revoke_deletes_the_lease_keys_and_is_idempotent(harness):
    b = harness.backend()
    lease = b.grant(30)
    assert b.time_to_live(lease) >= 29
    b.put("/data/o1", "{}", lease=lease)
    b.put("/data/o2", "{}", lease=lease)
    b.put("/data/o2", "{}")  # rewritten without the lease: no longer bound to it
    b.revoke(lease)
    b.revoke(lease)
    assert [kv.key for kv in b.range("/data/").kvs] == ["/data/o2"]
    assert json.loads(b.get("/data/o2").value) == {}
