"""Ray Data over the store: reading objects and global DataFrames, writing Datasets."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

import vineyard  # noqa: E402
import vineyard.contrib.ray as vray  # noqa: E402
from vineyard.contrib.ray import data as vdata  # noqa: E402
from vineyard.contrib.ray import lifetime  # noqa: E402
from vineyard.data.dataframe import make_global_dataframe  # noqa: E402


def collect(ds: Any) -> pd.DataFrame:
    """The Dataset's rows sorted by ``a`` (block by block: ``Dataset.to_pandas`` trips a
    pandas 3 deprecation inside Ray)."""
    frames = ray.get(ds.to_pandas_refs())
    return pd.concat(frames, ignore_index=True).sort_values("a", ignore_index=True)


def rows(start: int, stop: int) -> pd.DataFrame:
    a = np.arange(start, stop, dtype="int64")
    return pd.DataFrame({"a": a, "b": a * 0.5})


def test_datasource_plans_one_part_per_object_and_a_soft_local_placement(
    ray_cluster: Any, no_leaks: vineyard.Client,
) -> None:
    client = no_leaks
    ids = [client.put(rows(0, 10)), client.put(rows(10, 30)), client.put(pa.table({"a": np.arange(5)}))]
    glob = make_global_dataframe(client, ids[:2])
    try:
        source = vray.VineyardDatasource([glob.id, ids[2]])
        assert [r.object_id for r in source.parts] == ids
        tasks = source.get_read_tasks(2)
        assert len(tasks) == 2
        assert [t.metadata.num_rows for t in tasks] == [10, 25]
        assert sum(t.metadata.size_bytes for t in tasks) == source.estimate_inmemory_data_size() > 0
        assert len(source.get_read_tasks(10)) == 3  # never more tasks than objects
        node = ray.get_runtime_context().get_node_id()
        assert source.placement() == vdata.soft_affinity(node)
        assert source.placement()["fallback_strategy"] == [{"label_selector": {}}]
    finally:
        client.delete(glob.id, deep=False)
        client.delete(ids)


def test_read_objects_and_a_global_dataframe(
    ray_cluster: Any, no_leaks: vineyard.Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = no_leaks
    ids = [client.put(rows(0, 1000)), client.put(rows(1000, 3000)), client.put(rows(3000, 3500))]
    table = client.put(pa.Table.from_pandas(rows(3500, 4000), preserve_index=False))
    glob = make_global_dataframe(client, ids[:2])
    # Point the placement at a node that does not exist: the read only finishes if the
    # affinity is soft.
    host = vineyard.contrib.ray.stores.local_host()
    monkeypatch.setattr(vdata, "_nodes_by_host", lambda: {host: "ff" * 28})
    try:
        got = collect(vray.from_vineyard([glob.id, vray.VineyardRef(ids[2]), table]))
    finally:
        client.delete(glob.id, deep=False)
        client.delete([*ids, table])
    pd.testing.assert_frame_equal(got, rows(0, 4000), check_dtype=False)


def test_missing_object_fails_on_the_driver_naming_it(ray_cluster: Any) -> None:
    with pytest.raises(vineyard.ObjectNotExistsException, match="o0000000000000007"):
        vray.from_vineyard(["o0000000000000007"])


@pytest.mark.parametrize(("fmt", "kind"), [("pandas", pd.DataFrame), ("arrow", pa.Table)])
def test_write_bundles_blocks_into_objects_of_at_least_min_rows(
    ray_cluster: Any, no_leaks: vineyard.Client, fmt: str, kind: type,
) -> None:
    client = no_leaks
    ds = ray.data.from_pandas([rows(i * 2500, (i + 1) * 2500) for i in range(8)])
    refs = vray.to_vineyard(ds, global_=False, min_rows_per_write=5000, format=fmt)
    frames: list[Any] = []
    try:
        assert isinstance(refs, list)
        assert len(refs) == 4
        frames = [r.get() for r in refs]
        assert all(isinstance(f, kind) for f in frames)
        assert [len(f) for f in frames] == [5000] * 4
        assert sorted(np.concatenate([f["a"].to_numpy() for f in frames]).tolist()) == list(range(20_000))
        job = lifetime.current_job()
        assert all(client.get_meta(r.object_id).labels[lifetime.LABEL_JOB] == job for r in refs)
    finally:
        frames.clear()
        vray.delete(refs)


def test_write_a_global_dataframe_and_read_it_back(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    client = no_leaks
    ds = ray.data.from_pandas([rows(i * 1000, (i + 1) * 1000) for i in range(4)])
    ref = vray.to_vineyard(ds, min_rows_per_write=2000)
    try:
        assert isinstance(ref, vray.VineyardRef)
        meta = client.get_meta(ref.object_id)
        assert meta.typename == "vineyard::GlobalDataFrame"
        assert int(meta["partitions_-size"]) == 2
        assert meta.labels[lifetime.LABEL_PERSIST] == "auto"  # persisted, but still the job's
        back = collect(vray.from_vineyard(ref))
        pd.testing.assert_frame_equal(back, rows(0, 4000), check_dtype=False)
    finally:
        ref.delete()  # deep: the partitions go with it


def _explode(batch: pd.DataFrame) -> pd.DataFrame:
    if int(batch["a"].iloc[0]) >= 3000:
        raise ValueError("boom")
    return batch


def test_failed_write_takes_back_what_was_written(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    ds = ray.data.from_pandas([rows(i * 1000, (i + 1) * 1000) for i in range(4)])
    ds = ds.map_batches(_explode, batch_format="pandas", batch_size=None)
    with pytest.raises(Exception, match="boom"):
        vray.to_vineyard(ds, global_=False, min_rows_per_write=1000)


def test_sink_rejects_contradictory_options() -> None:
    with pytest.raises(ValueError, match="not both"):
        vray.VineyardDatasink(min_rows_per_write=1, min_bytes_per_write=1)
    with pytest.raises(ValueError, match="format"):
        vray.VineyardDatasink(format="csv")
    with pytest.raises(ValueError, match="global_"):
        vray.VineyardDatasink(global_=True, format="arrow")
    assert vray.VineyardDatasink().min_bytes_per_write == vdata.DEFAULT_MIN_BYTES_PER_WRITE
