"""The pieces on their own, in this process: the data mapping, the serializers, the store
attachment and the memory measure (a real daemon, no cluster)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

pytest.importorskip("distributed")

import numpy as np
import pandas as pd
from distributed.protocol.serialize import deserialize, serialize

from vineyard.contrib.dask import VineyardWorkerData, VineyardWorkerPlugin, private_memory
from vineyard.contrib.dask.serialize import HANDSHAKE_KEY, HEADER_KEY
from vineyard.contrib.dask.store import backing_of
from vineyard.errors import ConnectionFailedException, NotEnoughMemoryException
from vineyard.testing import Daemon, address_in_store

MB = 1_000_000


@pytest.fixture
def mapping(daemon):
    m = VineyardWorkerData(daemon.socket, threshold="1 MiB")
    yield m
    m.close()


def test_large_supported_values_go_to_the_store_the_rest_to_the_heap(mapping, store):
    before = store.status.objects
    big = np.arange(MB // 4, dtype="int64")  # 2 MB
    mapping["big"] = big
    mapping["frame"] = pd.DataFrame({"x": np.ones(MB // 4)})
    mapping["small"] = np.ones(10)
    mapping["objects"] = np.array([object()] * (MB // 4))  # would be pickled: stays in the heap
    mapping["text"] = "not an array"

    assert mapping.object_id("big") is not None
    assert mapping.object_id("frame") is not None
    assert [mapping.object_id(k) for k in ("small", "objects", "text")] == [None, None, None]
    stored = mapping["big"]
    assert stored is not big
    assert not stored.flags.writeable
    assert address_in_store(stored.__array_interface__["data"][0])
    np.testing.assert_array_equal(stored, big)
    assert len(mapping) == 5
    assert set(mapping) == {"big", "frame", "small", "objects", "text"}
    assert "big" in mapping
    assert "nothing" not in mapping
    assert store.status.objects > before

    oid = mapping.object_id("big")
    del stored
    del mapping["big"]  # the last reference: deleted at once
    assert store.ref_counts([oid]) == [None]
    del mapping["small"]
    with pytest.raises(KeyError):
        mapping["small"]
    mapping.close()
    assert store.status.objects == before


def test_ref_counts_follow_the_views_without_the_garbage_collector(store, daemon):
    """The integration deletes on the daemon's holder counts: a dropped view must release its
    blobs at once, not at the next garbage collection."""
    import gc

    import vineyard

    other = vineyard.connect(daemon.socket)
    ids = [store.put(np.arange(1000)), store.put(pd.DataFrame({"x": np.arange(1000), "y": np.ones(1000)}))]
    gc.disable()
    try:
        views = [other.get(i) for i in ids]
        assert store.ref_counts(ids) == [1, 1]
        del views
        other.exists(ids[0])  # a request carries the queued releases
        assert store.ref_counts(ids) == [0, 0]
    finally:
        gc.enable()
        other.close()
    store.delete(ids)
    assert store.ref_counts([*ids, ids[0] | (1 << 63)]) == [None, None, None]


def test_a_view_that_outlives_its_key_is_freed_by_the_sweep(mapping, store):
    mapping["a"] = np.ones(MB // 4)
    oid = mapping.object_id("a")
    view = mapping["a"]
    del mapping["a"]
    assert store.ref_counts([oid]) == [1]  # still held through `view`
    assert oid in mapping.store.watched
    assert mapping.store.sweep() == 0
    del view
    assert mapping.store.sweep() == 1
    assert store.ref_counts([oid]) == [None]


def test_keys_sharing_one_object_store_it_once(mapping, store):
    mapping["a"] = np.ones(MB // 4)
    puts = mapping.store.stats["put"]
    mapping["b"] = mapping["a"]  # a task that returns its input
    assert mapping.store.stats["put"] == puts
    oid = mapping.object_id("a")
    assert mapping.object_id("b") == oid
    del mapping["a"]
    assert store.ref_counts([oid]) == [1]
    del mapping["b"]
    assert store.ref_counts([oid]) == [None]


def test_containers_keep_their_large_elements_in_the_store(mapping, store):
    big = pd.DataFrame({"x": np.ones(MB // 4)})
    mapping["groups"] = {0: big, 1: np.ones(10), 2: np.arange(MB // 4)}
    groups = mapping["groups"]
    assert isinstance(groups, dict)
    assert backing_of(groups[0]) is not None
    assert backing_of(groups[2]) is not None
    assert backing_of(groups[1]) is None
    assert mapping.object_id("groups") is None  # the dict itself is not an object
    ids = mapping.object_ids("groups")
    assert len(ids) == 2
    puts = mapping.store.stats["put"]
    mapping["piece"] = groups[0]  # what a shuffle's getitem task returns: adopted as it is
    assert mapping.store.stats["put"] == puts
    assert mapping.object_id("piece") == ids[0]
    mapping["pair"] = (groups[2], "label")
    assert mapping.object_ids("pair") == [ids[1]]
    del groups
    del mapping["groups"]
    assert store.ref_counts(ids) == [1, 1]  # still held by "piece" and "pair"
    del mapping["piece"], mapping["pair"]
    assert store.ref_counts(ids) == [None, None]


def test_spill_target_puts_heap_values_in_a_spill_buffer(daemon, tmp_path):
    plain = VineyardWorkerData(daemon.socket)
    spilling = VineyardWorkerData(daemon.socket, spill_target="1 KiB", worker_local_directory=str(tmp_path))
    try:
        assert not hasattr(plain, "fast")  # distributed evicts only from mappings with `fast`
        spilling["x"] = list(range(1000))  # not storable: heap, then disk past the target
        assert hasattr(spilling, "fast")
        assert spilling["x"] == list(range(1000))
        assert spilling.spilled_total is not None
    finally:
        plain.close()
        spilling.close()


def test_a_full_store_fails_the_task_unless_told_to_fall_back(caplog):
    with Daemon(size="16Mi") as small:
        strict = VineyardWorkerData(small.socket, threshold=1)
        lenient = VineyardWorkerData(small.socket, threshold=1, on_error="fallback")
        try:
            with pytest.raises(NotEnoughMemoryException):
                strict["x"] = np.ones(4 * MB)
            assert "x" not in strict
            with caplog.at_level(logging.WARNING, logger="vineyard.contrib.dask.data"):
                lenient["x"] = np.ones(4 * MB)
            assert lenient.object_id("x") is None
            assert lenient["x"].sum() == 4 * MB
            assert "store is full" in caplog.text
        finally:
            strict.close()
            lenient.close()


def test_a_missing_store_fails_clearly(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere.sock")
    with pytest.raises(ConnectionFailedException, match=r"nowhere\.sock"):
        VineyardWorkerData(missing)
    plugin = VineyardWorkerPlugin(socket=missing)
    with pytest.raises(ConnectionFailedException, match=r"nowhere\.sock"):
        asyncio.run(plugin.setup(SimpleNamespace(data={})))  # type: ignore[arg-type]
    monkeypatch.delenv("VINEYARD_IPC_SOCKET", raising=False)
    with pytest.raises(ConnectionFailedException, match="VINEYARD_IPC_SOCKET"):
        VineyardWorkerData()


def test_serializer_sends_an_id_only_to_a_peer_on_the_same_store(mapping):
    frame = pd.DataFrame({"x": np.arange(MB // 4, dtype="float64")})
    mapping["f"] = frame
    stored = mapping["f"]
    same = {"recipient": {HANDSHAKE_KEY: mapping.store.identity}}
    other = {"recipient": {HANDSHAKE_KEY: "elsewhere:0:0:0"}}

    header, frames = serialize(stored, serializers=["dask", "pickle"], context=same)
    assert frames == []
    assert header["sub-header"][HEADER_KEY]["id"] == repr(mapping.object_id("f"))
    received = mapping.store.stats["ids_received"]
    back = deserialize(header, frames)
    assert mapping.store.stats["ids_received"] == received + 1
    assert backing_of(back).object_id == mapping.object_id("f")
    pd.testing.assert_frame_equal(back, frame)

    for context in (other, None, {"recipient": {}}):
        header, frames = serialize(stored, serializers=["dask", "pickle"], context=context)
        assert HEADER_KEY not in header.get("sub-header", {})
        assert frames
        pd.testing.assert_frame_equal(deserialize(header, frames), frame)
    # values that are not in the store keep distributed's own serializers
    array = np.arange(10)
    header, frames = serialize(array, serializers=["dask", "pickle"], context=same)
    assert header["serializer"] == "dask"
    assert frames
    np.testing.assert_array_equal(deserialize(header, frames), array)


def test_private_memory_leaves_out_mapped_store_pages(mapping):
    import psutil

    mapping["big"] = np.ones(64 * MB // 8)
    view = mapping["big"]
    assert float(view.sum()) == 64 * MB // 8  # every page of the object is resident here
    rss, private = psutil.Process().memory_info().rss, private_memory()
    assert rss - private >= 64 * MB
    del view
