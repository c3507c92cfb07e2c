"""The cluster view's logic without processes: two object tables on one embedded backend.

Each "daemon" here is an :class:`ObjectStore` with a :class:`ClusterView`, a lease and a
watch on a shared :class:`LocalStore`; ``sync()`` applies whatever the watch has seen.
This is the fast tier of the multi-host tests (no etcd, no sockets).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from vineyard.errors import GlobalObjectInvalidException
from vineyard.ids import BLOB_BIT
from vineyard.store.allocator import Allocator
from vineyard.store.clusterview import ClusterView, Outcome
from vineyard.store.meta import Delete, Put, TxnConflict, data_key, name_key, session_prefix
from vineyard.store.meta.local import LocalBackend, LocalStore
from vineyard.store.migration import rebuild_tree
from vineyard.store.objects import ObjectStore

CONN = 1
GLOBAL = (1 << 64) - 1


class Member:
    """One daemon's object table and view, joined to the shared store."""

    def __init__(self, shared: LocalStore, instance_id: int) -> None:
        self.backend = LocalBackend(shared, session_prefix("vytest-view"))
        self.store = ObjectStore(Allocator(64 << 20), instance_id=instance_id)
        self.view = ClusterView(self.store)
        self.lease = self.backend.grant(60)
        snapshot = self.backend.range("/")
        self.watch = self.backend.watch("/", snapshot.revision + 1)
        self.view.reset(snapshot.kvs)
        self.backend.txn([], [Put(f"/instances/i{instance_id}/rpc_endpoint", json.dumps("127.0.0.1:1"), self.lease)])
        self.sync()

    def sync(self) -> Outcome:
        events = self.watch.wait(self.backend.head_revision(), timeout=5)
        return self.view.apply(events) if events else Outcome()

    def put_tensor(self, size: int = 100, persist: bool = True) -> int:
        blobs, _ = self.store.create_blobs(CONN, [size])
        tree = {"typename": "vineyard::Tensor<uint8>", "buffer_": {"id": blobs[0].id}, "nbytes": size}
        oid = self.store.create(CONN, tree, persist=persist)[0][0]
        self.store.release(CONN, [blobs[0].id])  # as a client's dropped views would
        if persist:
            self.publish(oid)
        return oid

    def publish(self, oid: int) -> int:
        records = self.view.unpublished(oid)
        revision = self.backend.commit(*self.view.publish_txn(records, self.lease))
        self.view.published.update(r.id for r in records)
        return revision

    def flush_deletes(self) -> None:
        ops, names = self.view.take_deletes()
        if ops:
            self.backend.txn([], ops)
        for name, _ in names:
            self.backend.txn([], [Delete(name_key(name))])


@pytest.fixture
def pair() -> Iterator[tuple[Member, Member]]:
    shared = LocalStore()
    a, b = Member(shared, 0), Member(shared, 1)
    a.sync()
    yield a, b
    for m in (a, b):
        m.watch.close()
        m.backend.close()
    shared.close()


def test_published_objects_are_installed_with_remote_blobs(pair):
    a, b = pair
    oid = a.put_tensor(100)
    assert not b.view.known(oid)
    b.sync()
    assert b.view.known(oid)
    assert b.view.instances.keys() == {0, 1}
    tree = b.store.tree(oid)
    blob = tree["buffer_"]
    assert blob["instance_id"] == 0
    assert blob["length"] == 100
    assert b.view.known(blob["id"])
    assert blob["id"] not in b.store.blobs
    got_tree, local_blobs = b.store.get(CONN, oid)
    assert local_blobs == []  # the bytes stay with a
    assert got_tree["transient"] is False
    # a's own echo changes nothing there
    assert a.sync().actions == []
    assert a.view.remote == set()
    assert a.view.published == {oid}
    transient = a.put_tensor(10, persist=False)
    b.sync()
    assert not b.view.known(transient)


def test_global_objects_refer_to_members_anywhere(pair):
    a, b = pair
    ida, idb = a.put_tensor(), b.put_tensor()
    a.sync()
    b.sync()
    created = b.store.create(
        CONN,
        {
            "typename": "vineyard::GlobalTensor",
            "global": True,
            "partitions_-0": {"id": ida},
            "partitions_-1": {"id": idb},
        },
        persist=True,
    )
    gid = created[0][0]
    assert b.store.objects[gid].fields["instance_id"] == GLOBAL
    compares, ops = b.view.publish_txn(b.view.unpublished(gid), b.lease)
    assert {c.key for c in compares} == {data_key(ida), data_key(idb)}
    assert [op.key for op in ops] == [data_key(gid)]
    b.backend.commit(compares, ops)
    b.view.published.add(gid)
    a.sync()
    assert a.store.tree(gid)["partitions_-1"]["buffer_"]["instance_id"] == 1
    # a local object may not refer to another instance's object
    with pytest.raises(GlobalObjectInvalidException, match="Local object cannot refer remote"):
        a.store.create(CONN, {"typename": "vineyard::Pair", "x": {"id": idb}})
    # publishing over a member deleted meanwhile conflicts
    created = a.store.create(
        CONN, {"typename": "vineyard::GlobalTensor", "global": True, "partitions_-0": {"id": idb}}, persist=True
    )
    b.backend.txn([], [Delete(data_key(idb))])
    with pytest.raises(TxnConflict):
        a.publish(created[0][0])


def test_deletes_travel_both_ways(pair):
    a, b = pair
    oid = a.put_tensor(1000)
    a.backend.commit([], [Put(name_key("t"), json.dumps(oid))])
    b.sync()
    a.sync()
    assert b.store.get_name("t") == oid
    assert a.store.get_name("t") == oid
    # b deletes a's object: keys go, a deletes it and frees its blob
    kept, _ = b.store.delete([oid])
    assert kept == []
    ops, names = b.view.take_deletes()
    assert [op.key for op in ops] == [data_key(oid)]
    assert names == [("t", oid)]
    assert b.store.remote_blobs == {}
    b.backend.txn([], [*ops, Delete(name_key("t"))])
    blob = a.store.objects[oid].members["buffer_"]
    outcome = a.sync()
    assert oid not in a.store.objects
    assert blob not in a.store.blobs  # its memory is freed
    assert a.store.get_name("t") is None
    assert "t" in outcome.names
    assert a.view.take_deletes() == ([], [])  # etcd deleted it already: nothing to echo
    # and the other way round
    other = a.put_tensor()
    b.sync()
    a.store.delete([other])
    a.flush_deletes()
    b.sync()
    assert other not in b.store.objects
    assert b.view.remote == set()


def test_a_departure_uninstalls_and_leaves_what_to_reap(pair):
    a, b = pair
    ida, idb = a.put_tensor(), b.put_tensor()
    b.sync()
    gid = b.store.create(
        CONN,
        {
            "typename": "vineyard::GlobalTensor",
            "global": True,
            "partitions_-0": {"id": ida},
            "partitions_-1": {"id": idb},
        },
        persist=True,
    )[0][0]
    b.publish(gid)
    b.backend.commit([], [Put(name_key("on-a"), json.dumps(ida)), Put(name_key("on-b"), json.dumps(idb))])
    b.sync()
    assert not b.view.lowest_live()
    assert a.view.lowest_live()
    a.backend.revoke(a.lease)  # a dies: its registration and objects go in one revision
    outcome = b.sync()
    assert outcome.departed == {0}
    assert not outcome.lost
    assert ida not in b.store.objects
    assert b.view.instances.keys() == {1}
    assert b.view.lowest_live()
    assert b.view.dangling_globals() == [gid]
    assert [name for name, _ in b.view.dangling_names()] == ["on-a"]
    # a sees itself go
    assert a.sync().lost


def test_reset_matches_a_fresh_read(pair):
    a, b = pair
    keep, drop = a.put_tensor(), a.put_tensor()
    mine = b.put_tensor()
    b.sync()
    assert drop in b.store.objects
    b.watch.close()  # b stops watching; meanwhile the cluster changes
    a.backend.txn([], [Delete(data_key(drop)), Delete(data_key(mine))])
    new = a.put_tensor()
    a.backend.commit([], [Put(name_key("n"), json.dumps(new))])
    outcome = b.view.reset(b.backend.range("/").kvs)
    assert keep in b.store.objects
    assert new in b.store.objects
    assert drop not in b.store.objects
    assert mine not in b.store.objects  # ours, deleted by someone else
    assert b.store.get_name("n") == new
    assert "n" in outcome.names


def test_malformed_values_are_skipped(pair, caplog):
    a, b = pair
    a.backend.commit(
        [],
        [Put(data_key(0x42), b"{not json"), Put("/data/o0000000000000043/__name", b"x"), Put(name_key("bad"), b"[]")],
    )
    b.sync()
    assert 0x42 not in b.store.objects
    assert "bad" not in b.store.names
    assert "malformed" in caplog.text


def test_rebuild_tree_keeps_signatures_and_swaps_blobs():
    tree = {
        "id": 1,
        "typename": "T",
        "signature": 7,
        "instance_id": 0,
        "transient": False,
        "__name": "n",
        "__timestamp": 5,
        "shape_": "[3]",
        "buffer_": {"id": BLOB_BIT | 9, "typename": "vineyard::Blob", "length": 3, "instance_id": 0},
        "index_": {
            "id": 2,
            "typename": "I",
            "signature": 8,
            "b": {"id": BLOB_BIT | 10, "typename": "vineyard::Blob", "length": 0},
        },
    }
    out = rebuild_tree(tree, {BLOB_BIT | 9: BLOB_BIT | 99})
    assert out == {
        "typename": "T",
        "signature": 7,
        "shape_": "[3]",
        "buffer_": {"id": BLOB_BIT | 99},
        "index_": {"typename": "I", "signature": 8, "b": {"id": BLOB_BIT | 10}},
    }
