"""Blobs (builders, abort, shrink, shared-memory lookups) over IPC, and the same API over RPC
and from several threads, against real daemons."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import vineyard
from vineyard import Blob, BlobBuilder, ObjectID, ObjectMeta
from vineyard.testing import address_in_store


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- blobs (IPC) ---------------------------------------------------------------------------


def test_blob_builder_write_seal_get(client) -> None:
    builder = client.create_blob(64)
    assert isinstance(builder, BlobBuilder)
    assert builder.id.is_blob
    assert len(builder) == 64
    assert not builder.issealed
    builder[0] = 7
    builder[1:4] = [1, 2, 3]
    builder.copy(4, b"hello")
    builder.copy(9, np.arange(5, dtype=np.uint8))
    builder.copy(20, memoryview(b"xyz"))
    builder["note"] = "meta key"
    assert builder.meta["note"] == "meta key"
    assert address_in_store(builder.address)
    with pytest.raises(vineyard.AssertionFailedException, match="overflows"):
        builder.copy(60, b"0123456789")
    with pytest.raises(vineyard.AssertionFailedException):
        builder.copy(-1, b"x")
    blob = builder.seal(client)
    assert isinstance(blob, Blob)
    assert blob.id == builder.id
    assert blob.size == 64
    assert not blob.is_empty
    assert bytes(blob[:9]) == b"\x07\x01\x02\x03hello"
    assert bytes(blob[20:23]) == b"xyz"
    assert memoryview(blob).readonly
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(blob)[0] = 1
    again = client.get_blob(blob.id)
    assert bytes(again[:9]) == bytes(blob[:9])
    assert again.address == blob.address  # the same mapping, not a copy
    assert address_in_store(again.address)
    assert client.get_object(blob.id).id == blob.id
    assert repr(blob) == f'Blob <"{blob.id!r}": 64 bytes>'


def test_blob_builders_in_bulk_and_empty(client) -> None:
    builders = client.create_blob([10, 0, 20])
    assert [len(b) for b in builders] == [10, 0, 20]
    assert builders[1].id == ObjectID("o8000000000000000")
    empty = builders[1].seal(client)
    assert empty.is_empty
    assert len(empty) == 0
    assert client.create_empty_blob().id == ObjectID("o8000000000000000")
    assert Blob.empty(client).is_empty
    for b in (builders[0], builders[2]):
        b.abort(client)
    with pytest.raises(ValueError, match="non-negative"):
        client.create_blob(-1)


def test_blob_abort_and_shrink(client) -> None:
    builder = client.create_blob(1000)
    builder.abort(client)
    assert client.get_blobs([builder.id]) == [None]
    with pytest.raises(vineyard.ObjectNotExistsException):
        client.get_blob(builder.id)
    builder = client.create_blob(1000)
    builder.copy(0, b"abc")
    builder.shrink(client, 3)
    with pytest.raises(vineyard.InvalidException, match="shrink"):
        builder.shrink(client, 10)
    blob = builder.seal(client)
    assert len(blob) == 3
    assert bytes(blob) == b"abc"
    with pytest.raises(vineyard.ObjectSealedException):
        builder.shrink(client, 1)
    with pytest.raises(vineyard.ObjectSealedException):
        builder.abort(client)
    with pytest.raises(vineyard.ObjectSealedException):
        builder.seal(client)


def test_unsealed_blobs_need_unsafe(client) -> None:
    builder = client.create_blob(8)
    builder.copy(0, b"partial!")
    with pytest.raises(vineyard.ObjectNotSealedException, match=repr(builder.id)):
        client.get_blob(builder.id)
    peek = client.get_blob(builder.id, unsafe=True)
    assert bytes(peek) == b"partial!"
    assert not client.exists(builder.id)
    builder.seal(client)
    assert client.exists(builder.id)


def test_get_blob_refuses_object_ids(client) -> None:
    with pytest.raises(vineyard.InvalidException, match="not a blob"):
        client.get_blob(client.put(1))


def test_blobs_as_metadata_members(client) -> None:
    builder = client.create_blob(16)
    builder.copy(0, np.arange(4, dtype=np.int32).tobytes())
    meta = ObjectMeta()
    meta["typename"] = "vineyard::Tensor<int>"
    meta["shape_"] = "[4]"
    meta["value_type_"] = "int32"
    meta["value_type_meta_"] = "<i4"
    meta["order_"] = "C"
    meta["nbytes"] = 16
    meta.add_member("buffer_", builder)  # an unsealed builder: sealed with the metadata
    client.create_metadata(meta)
    assert client.exists(builder.id)
    assert list(client.get(meta.id)) == [0, 1, 2, 3]


def test_find_shared_memory(client) -> None:
    array = client.get(client.put(np.arange(1000)))
    found = client.find_shared_memory(array)
    assert found == client.get_meta(client.put(array))["buffer_"].id  # put dedups a stored array
    assert client.is_shared_memory(array.__array_interface__["data"][0])
    assert client.find_shared_memory(np.arange(10)) is None
    assert client.find_shared_memory(array[1:]) is None  # only the exact start of a blob


# -- RPC -----------------------------------------------------------------------------------


def test_rpc_copies_blob_bytes(rpc_client, client) -> None:
    object_id = client.put(np.arange(1000))
    array = rpc_client.get(object_id)
    assert not address_in_store(array.__array_interface__["data"][0])
    np.testing.assert_array_equal(array, np.arange(1000))
    assert not array.flags.writeable
    back = client.get(rpc_client.put(np.arange(50.0)))
    assert address_in_store(back.__array_interface__["data"][0])
    np.testing.assert_array_equal(back, np.arange(50.0))


def test_rpc_remote_blobs(rpc_client, client) -> None:
    builder = vineyard.RemoteBlobBuilder(12)
    assert len(builder) == 12
    builder.copy(0, b"remote")
    builder.copy(6, memoryview(b"bytes!"))
    with pytest.raises(vineyard.AssertionFailedException):
        builder.copy(10, b"too long")
    meta = rpc_client.create_remote_blob(builder)
    assert meta.id.is_blob
    assert meta.typename == "vineyard::Blob"
    assert meta["length"] == 12
    assert bytes(rpc_client.get_remote_blob(meta.id)) == b"remotebytes!"
    assert bytes(client.get_blob(meta.id)) == b"remotebytes!"  # IPC sees the same blob
    wrapped = [vineyard.RemoteBlobBuilder.wrap(b"one"), vineyard.RemoteBlobBuilder.wrap(np.arange(3, dtype=np.uint8))]
    metas = rpc_client.create_remote_blob(wrapped)
    blobs = rpc_client.get_remote_blobs([m.id for m in metas] + [ObjectID("o8000000000000077")])
    assert bytes(blobs[0]) == b"one"
    assert bytes(blobs[1]) == b"\x00\x01\x02"
    assert blobs[2] is None
    with pytest.raises(vineyard.InvalidException, match="create_remote_blob"):
        rpc_client.create_blob(10)
    with pytest.raises(vineyard.InvalidException, match="RPC"):
        client.create_remote_blob(builder)


def test_rpc_large_payloads_both_ways(rpc_client, client) -> None:
    value = np.random.default_rng(0).integers(0, 255, 40 << 20, dtype=np.uint8)
    object_id = rpc_client.put(value)
    np.testing.assert_array_equal(client.get(object_id), value)
    np.testing.assert_array_equal(rpc_client.get(object_id), value)


def test_ipc_and_rpc_see_the_same_objects(rpc_client, client) -> None:
    name = unique()
    object_id = client.put(np.arange(5), persist=True, name=name)
    assert rpc_client.get_name(name) == object_id
    assert rpc_client.exists(object_id)
    rpc_client.delete(object_id)
    assert not client.exists(object_id)


def test_module_level_put_get(store, monkeypatch) -> None:
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", store.socket)
    object_id = vineyard.put(np.arange(3))
    assert list(vineyard.get(object_id)) == [0, 1, 2]


def test_get_name_with_an_infinite_timeout_waits(any_client) -> None:
    name = unique()
    object_id = any_client.put(3, persist=True, name=name)
    assert any_client.get_name(name, wait=True, timeout=float("inf")) == object_id


def test_one_client_shared_by_threads(client) -> None:
    import threading

    errors: list[str] = []

    def work(k: int) -> None:
        try:
            for j in range(30):
                object_id = client.put(np.full(1000, k * 1000 + j))
                assert int(client.get(object_id)[0]) == k * 1000 + j
                client.delete(object_id)
        except Exception as exc:  # reported below, with the thread's context
            errors.append(f"{k}: {exc!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_rpc_uploads_do_not_pin_memory(make_daemon) -> None:
    daemon = make_daemon(size="128Mi", rpc=True)
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    with vineyard.connect(host, int(port)) as remote:
        for _ in range(20):  # 20 x 10 MiB through a 128 MiB store: only if deletes free memory
            object_id = remote.put(np.ones(10 << 17))
            assert remote.get(object_id).shape == (10 << 17,)
            remote.delete(object_id)
            assert remote.status.memory_usage == 0
        meta = remote.create_remote_blob(vineyard.RemoteBlobBuilder.wrap(b"x" * 5000))
        remote.delete(meta.id)
        assert remote.status.memory_usage == 0


def test_rpc_put_past_the_limit_fails_cleanly(make_daemon) -> None:
    daemon = make_daemon(size="64Mi", rpc=True)
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    with vineyard.connect(host, int(port)) as remote:
        kept = remote.put(np.arange(10))
        # a payload that would read as "clear" requests if the daemon took it for frames
        from vineyard.protocol import encode

        frames = encode({"type": "clear"}) * ((80 << 20) // len(encode({"type": "clear"})))
        with pytest.raises(vineyard.NotEnoughMemoryException, match="Failed to allocate"):
            remote.put(frames)
        assert remote.exists(kept)  # nothing in the payload was executed
        assert remote.get(kept).tolist() == list(range(10))  # and the connection is in step
        assert remote.status.memory_usage == 128


def test_a_refused_tree_gives_its_new_blobs_back(make_daemon) -> None:
    daemon = make_daemon(rpc=True)
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    for client in (vineyard.connect(daemon.socket), vineyard.connect(host, int(port))):
        with client:
            meta = ObjectMeta()
            meta["typename"] = "t"
            meta.add_member("data", vineyard.meta.PendingBlob(np.ones(1000)))
            meta.add_member("gone", ObjectID(0x0000123456789ABC))  # refused: no such member
            with pytest.raises(vineyard.ObjectNotExistsException):
                client.create_metadata(meta)
            assert client.status.memory_usage == 0
            assert client.status.blobs == 0
