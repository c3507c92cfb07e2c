"""Dask arrays and DataFrames through global objects: partitions stored where they are held,
read back where they live, never gathered into the calling process."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

import json

import dask.array as da
import dask.dataframe as dd
import dask_tasks as tasks
import numpy as np
import pandas as pd
from dask.sizeof import sizeof
from distributed import futures_of, wait

from vineyard.contrib.dask import dask_context, worker_stores
from vineyard.contrib.dask.store import LABEL_WORKER


def partition_metas(store, global_id):
    meta = store.get_meta(global_id)
    return [meta.get_member(f"partitions_-{i}").meta for i in range(int(meta["partitions_-size"]))]


def holders(client, collection):
    """``{partition index: worker}`` for a persisted collection (its futures' keys end in
    the partition's index)."""
    who_has = client.who_has(futures_of(collection))
    return {tuple(key[1:]): workers[0] for key, workers in who_has.items()}


def spread_array(client, data, workers):
    """A persisted 2 x 2-block array whose top blocks live on one worker, bottom on the other."""
    half = data.shape[0] // 2
    chunks = (half, data.shape[1] // 2)
    top = client.persist(da.from_array(data[:half], chunks=chunks), workers=[workers[0]])
    bottom = client.persist(da.from_array(data[half:], chunks=chunks), workers=[workers[1]])
    array = client.persist(da.concatenate([top, bottom]))
    wait(array)
    return array


def test_dask_array_round_trip_keeps_partitions_in_place(client, workers, store):
    rng = np.random.default_rng(1)
    data = rng.random((1024, 512))  # 1 MiB blocks: already in the store as task results
    array = spread_array(client, data, workers)
    placed = holders(client, array)
    assert set(placed.values()) == set(workers)
    for future in futures_of(array):  # the blocks already live in the store
        where = placed[tuple(future.key[1:])]
        assert client.run(tasks.stored_object, future.key, workers=[where])[where] is not None

    with dask_context():
        global_id = store.put(array, dask_client=client)
        meta = store.get_meta(global_id)
        assert meta.typename == "vineyard::GlobalTensor"
        assert meta.isglobal
        parts = partition_metas(store, global_id)
        assert len(parts) == 4
        # each partition was stored by the worker that held its block
        for part in parts:
            assert part.labels[LABEL_WORKER] == placed[block_index(part)]
        del meta, parts
        back = store.get(global_id, dask_client=client)
    assert isinstance(back, da.Array)
    assert back.shape == data.shape
    assert back.numblocks == (2, 2)
    assert sizeof(dict(back.__dask_graph__())) < data.nbytes // 10  # futures, not data
    back = client.persist(back)
    wait(back)
    # each block was read on the worker that stored it
    read_on = holders(client, back)
    assert read_on == placed
    np.testing.assert_array_equal(back.compute(), data)
    del back, array
    store.delete(global_id, deep=True)


def block_index(part):
    return tuple(json.loads(part["partition_index_"]))


def test_dask_dataframe_round_trip_keeps_partitions_in_place(client, workers, store):
    frame = pd.DataFrame({"x": np.arange(40_000, dtype="int64"), "y": np.linspace(0, 1, 40_000)})
    quarters = [
        client.persist(dd.from_pandas(frame.iloc[i * 10_000 : (i + 1) * 10_000], npartitions=1),
                       workers=[workers[i % 2]])
        for i in range(4)
    ]
    ddf = client.persist(dd.concat(quarters))
    wait(ddf)
    placed = holders(client, ddf)
    assert set(placed.values()) == set(workers)

    with dask_context():
        global_id = store.put(ddf, dask_client=client)
        assert store.get_meta(global_id).typename == "vineyard::GlobalDataFrame"
        parts = partition_metas(store, global_id)
        assert [int(p["partition_index_row_"]) for p in parts] == [0, 1, 2, 3]
        owners = [p.labels[LABEL_WORKER] for p in parts]
        assert owners == [placed[(i,)] for i in range(4)]
        del parts
        back = store.get(global_id, dask_client=client)

    assert isinstance(back, dd.DataFrame)
    assert back.npartitions == 4
    assert sizeof(dict(back.__dask_graph__())) < frame.memory_usage().sum() // 10  # futures, not data
    back = client.persist(back)
    wait(back)
    read_on = holders(client, back)
    assert [read_on[(i,)] for i in range(4)] == owners
    pd.testing.assert_frame_equal(back.compute(), frame)
    assert float(back["y"].sum().compute()) == pytest.approx(float(frame["y"].sum()))
    del back, ddf, quarters
    store.delete(global_id, deep=True)


def test_get_without_a_dask_client_leaves_the_global_object_alone(client, store):
    array = client.persist(da.ones((10, 10), chunks=(5, 10)))
    wait(array)
    with dask_context():
        global_id = store.put(array, dask_client=client)
        obj = store.get(global_id)
    assert obj.typename == "vineyard::GlobalTensor"
    del array
    store.delete(global_id, deep=True)


def test_the_scheduler_knows_each_workers_store(client, workers, daemon):
    stores = worker_stores(client)
    assert set(stores) == set(workers)
    assert {info["socket"] for info in stores.values()} == {daemon.socket}
    assert len({info["store"] for info in stores.values()}) == 1
