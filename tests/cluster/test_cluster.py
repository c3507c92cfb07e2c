"""Several daemons sharing one etcd: registration, persisted metadata, names, global objects,
remote reads, migration and deletes, all through real processes on loopback.

Reads that follow a write on another daemon need no polling: the daemon takes a read
barrier first (read-your-writes across instances), which these tests rely on.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest

import vineyard
from vineyard.data.dataframe import make_global_dataframe
from vineyard.data.tensor import make_global_tensor
from vineyard.errors import (
    ConnectionFailedException,
    GlobalObjectInvalidException,
    InvalidException,
    ObjectNotExistsException,
)
from vineyard.ids import ObjectID

MiB = 1 << 20


def test_instances_register_with_distinct_ids_and_endpoints(make_nodes):
    nodes = make_nodes(3)
    ids = [node.client.instance_id for node in nodes]
    assert len(set(ids)) == 3
    for node in nodes:
        meta = node.client.meta
        assert sorted(meta) == sorted(ids)
        for other in nodes:
            entry = meta[other.client.instance_id]
            assert entry["rpc_endpoint"] == other.endpoint
            assert entry["ipc_socket"] == other.socket
            assert {"hostname", "nodename", "hostid", "timestamp"} <= set(entry)
    # the instance id is in every id the daemon makes
    oid = nodes[2].client.put(1)
    assert (int(oid) >> 12) & 0x3FF == nodes[2].client.instance_id & 0x3FF


def test_persisted_metadata_is_visible_on_another_instance(make_nodes):
    a, b = make_nodes(2)
    value = np.arange(1000, dtype=np.float64)
    persisted = a.client.put(value, persist=True)
    transient = a.client.put(value)
    meta = b.client.get_meta(persisted)  # no waiting: the daemon syncs before it answers
    assert meta.typename.startswith("vineyard::Tensor")
    assert meta.instance_id == a.client.instance_id
    assert not meta.islocal
    assert meta.signature == a.client.get_meta(persisted).signature
    assert b.client.exists(persisted)
    with pytest.raises(ObjectNotExistsException):
        b.client.get_meta(transient)
    assert not b.client.exists(transient)
    # persisting later publishes it too
    a.client.persist(transient)
    assert b.client.get_meta(transient).id == transient


def test_names_are_cluster_wide(make_nodes):
    a, b = make_nodes(2)
    x = a.client.put("x", persist=True)
    y = b.client.put("y", persist=True)
    a.client.put_name(x, "shared")
    assert b.client.get_name("shared") == x
    b.client.put_name(y, "shared")  # overwrites, as upstream
    assert a.client.get_name("shared") == y
    assert b.client.get(name="shared") == "y"
    a.client.drop_name("shared")
    with pytest.raises(ObjectNotExistsException):
        b.client.get_name("shared")
    with pytest.raises(InvalidException, match="persist it first"):
        a.client.put_name(a.client.put("transient"), "nope")
    # put with a name, and a wait on another instance for a name that comes later
    found: list[ObjectID] = []
    waiter = threading.Thread(target=lambda: found.append(b.client.get_name("later", wait=True, timeout=20)))
    waiter.start()
    z = a.client.put("z", persist=True, name="later")
    waiter.join(25)
    assert found == [z]
    assert "later" in b.client.list_names("*", limit=100)


def test_global_objects_span_two_instances(make_nodes):
    a, b = make_nodes(2)
    df_a = pd.DataFrame({"x": [1, 2, 3]})
    df_b = pd.DataFrame({"x": [4, 5]})
    ida = a.client.put(df_a, persist=True)
    idb = b.client.put(df_b, persist=True)
    gdf = make_global_dataframe(a.client, [ida, idb])
    assert gdf.isglobal
    assert gdf.instance_id == (1 << 64) - 1  # spread over several instances
    seen_on_b = b.client.get_meta(gdf.id)
    assert seen_on_b["partitions_-size"] == 2
    assert seen_on_b.get_member("partitions_-0").id == ida
    # each instance resolves the partitions it holds
    pd.testing.assert_frame_equal(a.client.get(gdf.id)[0], df_a)
    pd.testing.assert_frame_equal(b.client.get(gdf.id)[0], df_b)

    ta = a.client.put(np.ones((2, 3)), persist=True)
    tb = b.client.put(np.zeros((2, 3)), persist=True)
    gt = make_global_tensor(b.client, [ta, tb], shape=[4, 3], partition_shape=[2, 1])
    meta = a.client.get_meta(gt.id)
    assert meta.typename == "vineyard::GlobalTensor"
    assert [meta.get_member(f"partitions_-{i}").id for i in range(2)] == [ta, tb]

    # a local (non-global) object may not refer to another instance's object
    local = vineyard.ObjectMeta()
    local["typename"] = "vineyard::Sequence"
    local.add_member("x", idb)
    with pytest.raises(GlobalObjectInvalidException):
        a.client.create_metadata(local)


def test_remote_get_and_migration_of_64_mib(make_nodes):
    a, b = make_nodes(2, size="512Mi")
    payload = np.random.default_rng(7).integers(0, 255, size=64 * MiB, dtype=np.uint8)
    digest = hashlib.sha256(payload).hexdigest()
    origin = a.client.put(payload, persist=True)
    del payload

    fetched = b.client.get(origin)  # blobs come from a's RPC server
    assert hashlib.sha256(fetched).hexdigest() == digest
    assert b.client.status.memory_usage < 64 * MiB  # nothing was stored on b
    del fetched

    rpc = vineyard.connect(*b.endpoint.split(":"))  # an RPC-only client of b
    try:
        assert hashlib.sha256(rpc.get(origin)).hexdigest() == digest
    finally:
        rpc.close()

    copy = b.client.migrate(origin)
    assert copy != origin
    meta = b.client.get_meta(copy)
    assert meta.instance_id == b.client.instance_id
    assert meta.signature == a.client.get_meta(origin).signature
    assert not meta.transient
    assert b.client.status.memory_usage >= 64 * MiB
    assert hashlib.sha256(b.client.get(copy)).hexdigest() == digest
    assert a.client.get_meta(copy).instance_id == b.client.instance_id  # published
    # repeated migrations and get(fetch=True) are served from the copy
    assert b.client.migrate(origin) == copy
    assert hashlib.sha256(b.client.get(origin, fetch=True)).hexdigest() == digest
    assert a.client.migrate(origin) == origin  # already there
    # the copy outlives the original
    a.client.delete(origin)
    assert hashlib.sha256(b.client.get(copy)).hexdigest() == digest


def test_concurrent_migrations_make_one_copy(make_nodes):
    a, b = make_nodes(2, size="512Mi")
    origin = a.client.put(np.arange(4 * MiB, dtype=np.int64), persist=True)
    copies: list[ObjectID] = []
    clients = [vineyard.connect(b.socket) for _ in range(4)]
    try:
        threads = [threading.Thread(target=lambda c=c: copies.append(c.migrate(origin))) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for client in clients:
            client.close()
    assert len(copies) == 4
    assert len(set(copies)) == 1
    assert b.client.status.memory_usage < 2 * 32 * MiB  # one copy, not four


def test_migration_refuses_globals_and_blobs(make_nodes):
    a, b = make_nodes(2)
    ida = a.client.put(np.ones(4), persist=True)
    idb = b.client.put(np.ones(4), persist=True)
    g = make_global_tensor(a.client, [ida, idb])
    with pytest.raises(InvalidException, match="global"):
        b.client.migrate(g.id)
    blob = a.client.get_meta(ida).get_member("buffer_").id
    with pytest.raises(InvalidException, match="blob"):
        b.client.migrate(blob)
    with pytest.raises(ObjectNotExistsException):
        b.client.migrate(ObjectID(0x1234))


def test_deletes_propagate(make_nodes):
    a, b = make_nodes(2)
    x = a.client.put(np.arange(10), persist=True, name="x")
    y = a.client.put(np.arange(10), persist=True)
    assert b.client.exists(x)
    assert b.client.exists(y)
    b.client.delete(x)  # deleting another instance's object deletes it everywhere
    assert not a.client.exists(x)
    with pytest.raises(ObjectNotExistsException):
        a.client.get_name("x")
    a.client.delete(y)
    assert not b.client.exists(y)
    with pytest.raises(ObjectNotExistsException):
        b.client.get_meta(y)


def test_daemon_to_daemon_fetches_present_the_token(make_nodes, monkeypatch):
    monkeypatch.delenv("VINEYARD_RPC_TOKEN", raising=False)
    a, b = make_nodes(2, args=["--rpc-token", "s3cret"])
    origin = a.client.put(np.arange(1000), persist=True)
    with pytest.raises(ConnectionFailedException):
        b.client.get(origin)  # this client knows no token
    copy = b.client.migrate(origin)  # b knows it
    assert np.array_equal(b.client.get(copy), np.arange(1000))
    monkeypatch.setenv("VINEYARD_RPC_TOKEN", "s3cret")
    other = a.client.put(np.arange(5), persist=True)
    assert np.array_equal(b.client.get(other), np.arange(5))


def test_migrate_cli_prints_the_copy(make_nodes):
    a, b = make_nodes(2)
    origin = a.client.put(np.arange(MiB, dtype=np.int64), persist=True)
    done = subprocess.run(
        [sys.executable, "-m", "vineyard.migrate", "--socket", b.socket, repr(origin), "o0000000000001234"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr  # the second object does not exist
    line = done.stdout.strip().splitlines()[0]
    source, copy = line.split(" -> ")
    assert source == repr(origin)
    assert b.client.get_meta(ObjectID(copy)).instance_id == b.client.instance_id
    assert "o0000000000001234" in done.stderr


def test_instances_come_and_go_and_ids_are_never_reused(make_nodes):
    a, b = make_nodes(2)
    ids = {a.client.instance_id, b.client.instance_id}
    kept = b.client.put("b's", persist=True)
    assert a.client.exists(kept)
    b.close_client()
    assert b.daemon.stop() == 0  # a clean stop revokes the lease: its objects go at once
    assert sorted(a.client.meta) == [a.client.instance_id]
    assert not a.client.exists(kept)
    (c,) = make_nodes(1)
    assert c.client.instance_id not in ids
    assert sorted(a.client.meta) == sorted([a.client.instance_id, c.client.instance_id])
    a.client.sync_meta()


def test_deploy_helper_starts_a_cluster_member(etcd, prefix):
    from vineyard.deploy.local import start_vineyardd

    daemon = start_vineyardd(meta="etcd", etcd_endpoints=[etcd.endpoint], etcd_prefix=prefix, rpc=True)
    with daemon as (_, sock, endpoint), vineyard.connect(sock) as client:
        assert client.meta[client.instance_id]["rpc_endpoint"] == endpoint
        oid = client.put("v", persist=True)
        assert client.get(oid, fetch=True) == "v"
