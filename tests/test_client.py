"""The client API (API.md §2.5, §3) over IPC and RPC against real daemons."""

from __future__ import annotations

import json
import logging
import pickle
import uuid

import numpy as np
import pytest

import vineyard
from vineyard import Blob, Object, ObjectID, ObjectMeta, ObjectName


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def pair_meta(client, first, second, global_: bool = False) -> ObjectMeta:
    meta = ObjectMeta(global_=global_)
    meta["typename"] = "vineyard::Pair"
    meta.add_member("first_", first)
    meta["second_"] = second
    return meta


# -- ObjectMeta (no daemon) ----------------------------------------------------------------


def test_meta_typed_setitem() -> None:
    meta = ObjectMeta()
    meta["typename"] = "x"
    meta["s"] = "text"
    meta["b"] = True
    meta["i"] = 2**40
    meta["f"] = 0.1
    meta["n32"] = np.int32(5)
    meta["f32"] = np.float32(0.5)
    meta["l"] = [1, 2, 3]
    meta["t"] = (1, "a")
    meta["d"] = {"k": [1, {"z": None}]}
    meta["none"] = None
    assert meta["s"] == "text"
    assert meta["b"] is True
    assert meta["i"] == 2**40
    assert meta["f"] == 0.1  # a double stays a double (upstream narrows to float32)
    assert type(meta["n32"]) is int
    assert meta["n32"] == 5
    assert meta["f32"] == 0.5
    assert meta["l"] == "[1,2,3]"
    assert json.loads(meta["l"]) == [1, 2, 3]
    assert meta["t"] == '[1,"a"]'
    assert meta["d"] == '{"k":[1,{"z":null}]}'
    assert meta["none"] is None
    with pytest.raises(TypeError, match="cannot store"):
        meta["bad"] = object()
    assert "s" in meta
    assert "nope" not in meta
    assert meta.get("nope", 7) == 7
    assert set(meta) >= {"typename", "s", "l"}


def test_meta_missing_key_error_text() -> None:
    meta = ObjectMeta()
    with pytest.raises(KeyError) as info:
        meta["nope"]
    assert info.value.args[0] == "key 'nope' does not exist"


def test_meta_properties_of_a_fresh_meta() -> None:
    meta = ObjectMeta()
    assert meta.id == ObjectID()
    assert meta.nbytes == 0
    assert meta.typename == ""
    assert meta.islocal is True
    assert meta.isglobal is False
    assert meta.meta is meta
    meta.typename = "t"
    meta.nbytes = 10
    assert meta["typename"] == "t"
    assert meta.nbytes == 10
    g = ObjectMeta(global_=True)
    assert g.isglobal
    g.set_global(False)
    assert not g.isglobal
    assert ObjectMeta(False, "extra", x=1).isglobal is False  # extra args are ignored, as upstream


def test_meta_members_via_meta_object_and_id(client) -> None:
    inner = client.get_meta(client.put(np.arange(3)))
    meta = ObjectMeta()
    meta["typename"] = "t"
    meta["by_meta"] = inner
    meta["by_object"] = client.get_object(inner.id)
    meta["by_id"] = inner.id
    meta.add_member("added", inner.id)
    with pytest.raises(KeyError, match="already exists"):
        meta.add_member("added", inner.id)
    with pytest.raises(TypeError):
        meta.add_member("bad", "o0000000000000001")
    assert isinstance(meta["by_meta"], ObjectMeta)
    assert meta["by_meta"].typename == "vineyard::Tensor<int64>"
    assert meta["by_id"].id == inner.id
    created = client.create_metadata(meta)
    back = client.get_meta(created.id)
    for key in ("by_meta", "by_object", "by_id", "added"):
        assert back[key].id == inner.id
        assert back[key].typename == "vineyard::Tensor<int64>"
        assert isinstance(back[key]["buffer_"], ObjectMeta)
    assert isinstance(back.get_member("by_id"), Object)
    assert back.get_member("missing") is None
    assert list(client.get(back["by_id"].id)) == [0, 1, 2]


def test_meta_pickles_and_prints(client) -> None:
    meta = client.get_meta(client.put((1, "two")))
    back = pickle.loads(pickle.dumps(meta))
    assert back.id == meta.id
    assert back.typename == "vineyard::Sequence"
    assert back["__elements_-1"]["value_"] == "two"
    assert back["__elements_-0"].id == meta["__elements_-0"].id
    assert json.loads(repr(meta))["id"] == repr(meta.id)
    assert str(meta).startswith("ObjectMeta {")
    assert dict(meta.items())["typename"] == "vineyard::Sequence"


# -- put / get / metadata over IPC and RPC -------------------------------------------------


def test_put_get_roundtrip(any_client) -> None:
    values = [1, 2.5, "text", True, (1, 2, "x"), b"raw bytes", np.arange(12).reshape(3, 4), {"a": 1}]
    for value in values:
        got = any_client.get(any_client.put(value))
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
        elif isinstance(value, bytes):
            assert bytes(got) == value
        else:
            assert got == value


def test_get_accepts_id_forms(any_client) -> None:
    object_id = any_client.put(42)
    for form in (object_id, int(object_id), repr(object_id), ObjectID(int(object_id))):
        assert any_client.get(form) == 42
    with pytest.raises(TypeError):
        any_client.get(4.5)


def test_get_meta_and_object(any_client) -> None:
    object_id = any_client.put(np.arange(10, dtype=np.float64))
    meta = any_client.get_meta(object_id)
    assert meta.id == object_id
    assert meta.typename == "vineyard::Tensor<double>"
    assert meta.nbytes == 80
    assert meta["transient"] is True
    assert meta.instance_id == any_client.instance_id
    assert meta.islocal
    assert meta.signature > 0
    assert meta.timestamp > 0
    obj = any_client.get_object(object_id)
    assert isinstance(obj, Object)
    assert obj.id == object_id
    assert obj.typename == meta.typename
    assert repr(obj) == f'Object <"{object_id!r}": vineyard::Tensor<double>>'
    blob = obj.member("buffer_")
    assert isinstance(blob, Blob)
    assert blob.nbytes == 80
    assert len(blob) == 80
    assert obj["buffer_"].id == blob.id
    assert blob.id.is_blob
    with pytest.raises(KeyError):
        obj.member("nope")
    metas = any_client.get_metas([object_id, object_id])
    assert [m.id for m in metas] == [object_id, object_id]
    objs = any_client.get_objects([object_id])
    assert objs[0].nbytes == 80
    assert any_client.allocated_size(object_id) == 80


def test_missing_objects_name_the_id(any_client) -> None:
    missing = ObjectID(0x0000123456789ABC)
    with pytest.raises(vineyard.ObjectNotExistsException, match=repr(missing)):
        any_client.get(missing)
    with pytest.raises(vineyard.ObjectNotExistsException, match=repr(missing)):
        any_client.get_meta(missing)
    with pytest.raises(KeyError):  # ObjectNotExists is also a KeyError
        any_client.get_object(missing)
    assert any_client.exists(missing) is False


def test_create_metadata_pair_local(any_client) -> None:
    first = any_client.put(1)
    meta = pair_meta(any_client, first, any_client.get_meta(any_client.put("two")))
    meta["note"] = "hand-built"
    out = any_client.create_metadata(meta)
    assert out is meta
    assert meta.id != ObjectID()
    assert not meta.id.is_blob
    assert meta.instance_id == any_client.instance_id
    assert meta["transient"] is True
    assert meta["first_"].id == first
    back = any_client.get_meta(meta.id)
    assert back.typename == "vineyard::Pair"
    assert back["note"] == "hand-built"
    assert back["second_"]["value_"] == "two"
    assert any_client.get(back["first_"].id) == 1
    obj = any_client.get_object(meta.id)
    assert obj.member("second_").typename == "vineyard::Scalar<std::string>"
    assert any_client.get(meta.id).typename == "vineyard::Pair"  # no resolver: the Object itself


def test_create_metadata_pair_global(any_client) -> None:
    first, second = any_client.put(np.arange(3)), any_client.put(np.arange(4))
    any_client.persist(first)
    any_client.persist(second)
    meta = pair_meta(any_client, first, second, global_=True)
    any_client.create_metadata(meta)
    any_client.persist(meta.id)
    back = any_client.get_meta(meta.id)
    assert back.isglobal
    assert back["global"] is True
    assert back["transient"] is False
    assert [int(x) for x in any_client.get(back["second_"].id)] == [0, 1, 2, 3]
    nested = pair_meta(any_client, meta.id, first, global_=True)
    with pytest.raises(vineyard.GlobalObjectInvalidException, match="nested"):
        any_client.create_metadata(nested)


def test_create_metadata_list_and_errors(any_client) -> None:
    metas = []
    for i in range(3):
        meta = ObjectMeta()
        meta["typename"] = "vineyard::Scalar<int>"
        meta["value_"] = i
        metas.append(meta)
    out = any_client.create_metadata(metas)
    assert [any_client.get(m.id) for m in out] == [0, 1, 2]
    with pytest.raises(vineyard.MetaTreeInvalidException, match="typename"):
        any_client.create_metadata(ObjectMeta())
    blob_meta = ObjectMeta()
    blob_meta["typename"] = "vineyard::Blob"
    with pytest.raises(vineyard.AssertionFailedException):
        any_client.create_metadata(blob_meta)
    dangling = ObjectMeta()
    dangling["typename"] = "t"
    dangling.add_member("m", ObjectID(0x0000123456789ABC))
    with pytest.raises(vineyard.ObjectNotExistsException, match="o0000123456789abc"):
        any_client.create_metadata(dangling)


def test_persist_is_recursive(any_client) -> None:
    inner = any_client.put(np.arange(5))
    outer = any_client.create_metadata(pair_meta(any_client, inner, any_client.put(2)))
    assert any_client.get_meta(outer.id)["transient"] is True
    any_client.persist(outer.id)
    any_client.persist(outer)  # idempotent, and an ObjectMeta works too
    back = any_client.get_meta(outer.id)
    assert back["transient"] is False
    assert back["first_"]["transient"] is False
    assert back["second_"]["transient"] is False
    assert any_client.get_object(outer.id).ispersist
    blob_id = back["first_"]["buffer_"].id
    with pytest.raises(vineyard.AssertionFailedException, match="blobs cannot be persisted"):
        any_client.persist(blob_id)


def test_put_persist_publishes_existing_members(any_client) -> None:
    inner = any_client.put(7)
    outer = any_client.put((inner, 8), persist=True)  # a sequence holding an existing object
    meta = any_client.get_meta(outer)
    assert meta["transient"] is False
    assert meta["__elements_-0"].id == inner
    assert meta["__elements_-0"]["transient"] is False


def test_exists(any_client) -> None:
    object_id = any_client.put(np.arange(3))
    blob_id = any_client.get_meta(object_id)["buffer_"].id
    assert any_client.exists(object_id)
    assert any_client.exists(blob_id)
    any_client.delete(object_id)
    assert not any_client.exists(object_id)
    assert not any_client.exists(blob_id)


def test_delete_deep_force_and_reported_members(any_client, caplog) -> None:
    shared = any_client.put(np.arange(4))
    a = any_client.create_metadata(pair_meta(any_client, shared, any_client.put(1)))
    b = any_client.create_metadata(pair_meta(any_client, shared, any_client.put(2)))
    with caplog.at_level(logging.WARNING, logger="vineyard.client"):
        kept = any_client.delete(shared)
    assert kept == [shared]  # reported, not silently skipped
    assert repr(shared) in caplog.text
    assert "force=True" in caplog.text
    assert any_client.exists(shared)
    assert any_client.delete(a.id) == []
    assert not any_client.exists(a.id)
    assert not any_client.exists(a["second_"].id)
    assert any_client.exists(shared)  # b still holds it
    assert any_client.delete(shared, force=True) == []
    assert not any_client.exists(shared)
    assert not any_client.exists(b.id)
    assert any_client.delete(ObjectID(0x0000123456789ABC)) == []  # missing: not an error


def test_delete_shallow_keeps_object_members(any_client) -> None:
    inner = any_client.put(np.arange(4))
    outer = any_client.create_metadata(pair_meta(any_client, inner, any_client.put(5)))
    any_client.delete(outer.id, deep=False)
    assert not any_client.exists(outer.id)
    assert any_client.exists(inner)
    assert list(any_client.get(inner)) == [0, 1, 2, 3]


def test_delete_accepts_lists_metas_and_objects(any_client) -> None:
    ids = [any_client.put(i) for i in range(3)]
    any_client.delete([ids[0], ids[1]])
    any_client.delete(any_client.get_meta(ids[2]))
    assert not any(any_client.exists(i) for i in ids)
    other = any_client.put(9)
    any_client.delete(any_client.get_object(other))
    assert not any_client.exists(other)


def test_names(any_client) -> None:
    name = unique("name")
    object_id = any_client.put(np.arange(3), persist=True)
    any_client.put_name(object_id, name)
    assert any_client.get_name(name) == object_id
    assert any_client.get_name(ObjectName(name)) == object_id
    assert list(any_client.get(name=name)) == [0, 1, 2]
    assert any_client.get_meta(object_id)["__name"] == name
    other = any_client.put(5, persist=True)
    any_client.put_name(other, name)  # overwrites silently
    assert any_client.get_name(name) == other
    assert "__name" not in any_client.get_meta(object_id)  # the name moved on
    names = any_client.list_names(f"{name}*", limit=100)
    assert names == {name: other}
    assert isinstance(names[name], ObjectID)
    assert any_client.list_names(f"^{name}$", regex=True) == {name: other}
    any_client.drop_name(name)
    any_client.drop_name(name)  # dropping a missing name is a no-op
    with pytest.raises(vineyard.ObjectNotExistsException, match=f"failed to find name: {name}"):
        any_client.get_name(name)
    assert "__name" not in any_client.get_meta(other)


def test_name_rules(any_client) -> None:
    transient = any_client.put(1)
    with pytest.raises(vineyard.InvalidException, match="persist it first"):
        any_client.put_name(transient, unique())
    blob_id = any_client.get_meta(any_client.put(np.arange(3)))["buffer_"].id
    with pytest.raises(vineyard.InvalidException, match="blobs cannot have name"):
        any_client.put_name(blob_id, unique())
    with pytest.raises(vineyard.ObjectNotExistsException):
        any_client.put_name(ObjectID(0x0000123456789ABC), unique())
    name = unique()
    with pytest.warns(UserWarning, match="not persisted"):
        any_client.put(1, name=name)
    with pytest.raises(vineyard.ObjectNotExistsException):
        any_client.get_name(name)
    name = unique()
    object_id = any_client.put(2, persist=True, name=name)
    assert any_client.get_name(name) == object_id
    any_client.delete(object_id)
    with pytest.raises(vineyard.ObjectNotExistsException):  # deleting an object drops its names
        any_client.get_name(name)


def test_get_name_wait_with_timeout(any_client) -> None:
    name = unique()
    with pytest.raises(vineyard.ObjectNotExistsException, match=name):
        any_client.get_name(name, wait=True, timeout=0.2)
    object_id = any_client.put(1, persist=True, name=name)
    assert any_client.get_name(name, wait=True, timeout=5) == object_id
    assert any_client.get(object_id) == 1  # the connection works after a wait


def test_shallow_copy(any_client) -> None:
    source = any_client.put(np.arange(6), persist=True)
    copy = any_client.shallow_copy(source)
    assert copy != source
    assert list(any_client.get(copy)) == list(range(6))
    source_meta, copy_meta = any_client.get_meta(source), any_client.get_meta(copy)
    assert copy_meta["buffer_"].id == source_meta["buffer_"].id  # the blob is shared
    assert copy_meta["transient"] is True
    extra = any_client.shallow_copy(source, {"note": "x", "n": 3, "f": 1.5})
    meta = any_client.get_meta(extra)
    assert (meta["note"], meta["n"], meta["f"]) == ("x", 3, 1.5)
    with pytest.raises(vineyard.InvalidException, match="plain value"):
        any_client.shallow_copy(source, {"bad": [1, 2]})
    any_client.delete(source)
    assert list(any_client.get(copy)) == list(range(6))  # the copy keeps the blob alive


def test_labels(any_client) -> None:
    object_id = any_client.put(np.arange(2))
    any_client.label(object_id, "job", "etl")
    any_client.label(object_id, {"run": 7, "owner": "me"})
    meta = any_client.get_meta(object_id)
    assert meta.labels == {"job": "etl", "run": "7", "owner": "me"}
    assert meta.label("job") == "etl"
    assert meta.label("nope") is None
    with pytest.raises(vineyard.ObjectNotExistsException):
        any_client.label(ObjectID(0x0000123456789ABC), "k", "v")


def test_connection_facts(any_client, store) -> None:
    assert any_client.instance_id == 0
    assert any_client.ipc_socket == store.socket
    assert any_client.rpc_endpoint == store.rpc_endpoint
    assert any_client.version == vineyard.__version__
    assert any_client.connected
    assert any_client.is_ipc != any_client.is_rpc
    status = any_client.status
    assert isinstance(status, vineyard.InstanceStatus)
    assert status.instance_id == 0
    assert status.deployment == "local"
    assert status.memory_limit == 1 << 30
    assert 0 <= status.memory_usage <= status.memory_limit
    assert status.ipc_connections + status.rpc_connections >= 1
    assert str(status).startswith("InstanceStatus:")
    assert "memory_limit: 1073741824," in repr(status)
    assert any_client.meta[0]["ipc_socket"] == store.socket


def test_status_counts_connections(make_daemon) -> None:
    daemon = make_daemon(rpc=True)
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    ipc = [vineyard.connect(daemon.socket) for _ in range(3)]
    rpc = [vineyard.connect(host, int(port)) for _ in range(2)]
    status = ipc[0].status
    assert (status.ipc_connections, status.rpc_connections) == (3, 2)
    for c in ipc[1:] + rpc:
        c.close()
    for _ in range(200):  # the daemon notices closed connections asynchronously
        status = ipc[0].status
        if (status.ipc_connections, status.rpc_connections) == (1, 0):
            break
    assert (status.ipc_connections, status.rpc_connections) == (1, 0)
    ipc[0].close()


def test_list_objects_and_metadatas(make_daemon) -> None:
    daemon = make_daemon()
    with vineyard.connect(daemon.socket) as client:
        tensors = {client.put(np.arange(i + 1)) for i in range(4)}
        scalars = {client.put(i) for i in range(3)}
        found = client.list_objects("vineyard::Tensor*", limit=100)
        assert {o.id for o in found} == tensors
        assert all(isinstance(o, Object) for o in found)
        assert len(client.list_objects("vineyard::Tensor*")) == 4  # default limit is 5
        assert len(client.list_metadatas("*")) == 5
        assert len(client.list_metadatas("*", limit=2)) == 2
        metas = client.list_metadatas(r"vineyard::Scalar<(int|double)>", regex=True, limit=100)
        assert {m.id for m in metas} == scalars
        assert client.list_metadatas("Scalar", regex=True) == []  # the whole typename must match
        assert client.list_metadatas("(", regex=True) == []  # a bad regex matches nothing
        blobs = client.list_metadatas("vineyard::Blob", limit=100)
        assert len(blobs) == 4
        assert all(m.typename == "vineyard::Blob" and m.id.is_blob for m in blobs)
        nobuffer = client.list_metadatas("vineyard::Tensor*", limit=100, nobuffer=True)
        assert all("buffer_" not in m for m in nobuffer)


def test_clear(make_daemon) -> None:
    daemon = make_daemon()
    with vineyard.connect(daemon.socket) as client:
        ids = [client.put(np.arange(1000)) for _ in range(5)]
        client.put(1, persist=True, name="n")
        builder = client.create_blob(100)
        builder.seal(client)
        client.clear()
        assert not any(client.exists(i) for i in ids)
        assert client.list_names() == {}
        status = client.status
        assert status.objects == 0
        client.reset()  # upstream's alias


def test_close_and_context_manager(store) -> None:
    with vineyard.connect(store.socket) as client:
        object_id = client.put(1)
    assert not client.connected
    with pytest.raises(vineyard.ConnectionErrorException, match="closed"):
        client.get(object_id)
    client.close()  # closing twice is fine
