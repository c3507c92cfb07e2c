"""A DataFrame block goes in as adjacent blobs (one copy) and comes back as one 2-D block."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

import vineyard
from vineyard.client import _adjacent_runs
from vineyard.testing import Daemon, address_in_store, store_mappings

ROWS = 100_000


def numeric_frame() -> pd.DataFrame:
    df = pd.DataFrame({f"f{i}": np.arange(ROWS, dtype=np.float64) * (i + 1) for i in range(4)})
    for i in range(3):
        df[f"i{i}"] = np.arange(ROWS, dtype=np.int64) - i
    return df.copy()  # consolidated: one float64 block, one int64 block


def _column_blob_ids(client, object_id):
    meta = client.get_meta(object_id)
    count = int(meta["__values_-size"])
    return [meta[f"__values_-value-{i}"]["buffer_"].id for i in range(count)]


def _held(client, object_id):
    gc.collect()
    client.exists(object_id)  # releases ride on the next request
    return client.ref_counts([object_id])[0]


def test_adjacent_runs() -> None:
    block = np.arange(40, dtype=np.float64).reshape(4, 10)
    other = np.arange(5.0)
    sources = [block[0], block[1], other, block[2], block[3], np.empty(0), block[0]]
    as_bytes = [s.view(np.uint8) for s in sources]
    assert _adjacent_runs(as_bytes) == [[0, 2], [3, 2]]
    assert _adjacent_runs([block[0].view(np.uint8)]) == []
    assert _adjacent_runs([]) == []


def test_each_block_comes_back_as_one_block_over_shared_memory(client) -> None:
    df = numeric_frame()
    assert len(df._mgr.blocks) == 2
    back = client.get(client.put(df))
    pd.testing.assert_frame_equal(back, df)
    assert len(back._mgr.blocks) == 2
    mappings = store_mappings()
    for block in back._mgr.blocks:
        values = block.values
        assert values.shape == (len(block.mgr_locs), ROWS)
        assert not values.flags.writeable
        assert address_in_store(values.__array_interface__["data"][0], mappings)


def test_the_blobs_of_a_block_lie_side_by_side(client) -> None:
    df = numeric_frame()
    object_id = client.put(df)
    reply = client._t.request({"type": "get_data", "ids": [int(object_id)]})
    locs = {loc[0]: loc[1:] for loc in reply["blobs"]}
    floats = [locs[i] for i in _column_blob_ids(client, object_id)[:4]]
    assert len({seg for seg, _, _ in floats}) == 1
    assert [off - floats[0][1] for _, off, _ in floats] == [k * ROWS * 8 for k in range(4)]


def test_a_written_block_is_copied_first(client) -> None:
    df = numeric_frame()
    object_id = client.put(df)
    back = client.get(object_id)
    back.loc[0, "f1"] = -1.0  # copy-on-write: the store's bytes stay as they were
    assert back.loc[0, "f1"] == -1.0
    pd.testing.assert_frame_equal(client.get(object_id), df)


def test_dropping_the_frame_lets_go_of_every_blob(client) -> None:
    object_id = client.put(numeric_frame())
    back = client.get(object_id)
    assert _held(client, object_id) == 1
    del back
    assert _held(client, object_id) == 0


def test_a_kept_column_keeps_the_block_after_delete(client) -> None:
    df = numeric_frame()
    object_id = client.put(df)
    back = client.get(object_id)
    column = back["f2"]  # a view into the 2-D block
    del back
    client.delete(object_id)
    filler = [client.put(np.full(ROWS * 4, 7.0)) for _ in range(4)]  # reuse freed memory, if any
    np.testing.assert_array_equal(column.to_numpy(), df["f2"].to_numpy())
    client.delete(filler)


def test_putting_a_frame_read_back_reuses_its_blobs(client) -> None:
    object_id = client.put(numeric_frame())
    back = client.get(object_id)
    again = client.put(back)
    assert again != object_id
    assert _column_blob_ids(client, again) == _column_blob_ids(client, object_id)


@pytest.mark.parametrize("order", [[3, 0, 5, 1, 6, 2, 4], [6, 5, 4, 3, 2, 1, 0]])
def test_shuffled_columns_round_trip(client, order) -> None:
    df = numeric_frame()
    shuffled = df[[df.columns[i] for i in order]]
    back = client.get(client.put(shuffled))
    pd.testing.assert_frame_equal(back, shuffled)


def test_a_block_of_an_rpc_client_is_a_private_copy(rpc_client) -> None:
    df = numeric_frame()
    back = rpc_client.get(rpc_client.put(df))
    pd.testing.assert_frame_equal(back, df)


def test_a_spilled_block_comes_back_whole(tmp_path) -> None:
    daemon = Daemon(size="64Mi", args=["--spill-path", str(tmp_path / "spill")])
    try:
        with vineyard.connect(daemon.socket) as client:
            df = numeric_frame()
            object_id = client.put(df)
            used = client.status.memory_usage
            client.evict([object_id])
            status = client.status
            assert status.spilled_blobs == 7
            assert status.memory_usage <= used - df.memory_usage(index=False).sum()
            back = client.get(object_id)
            pd.testing.assert_frame_equal(back, df)
    finally:
        daemon.stop()


def test_a_daemon_that_ignores_runs_still_gets_every_column_right(client, monkeypatch) -> None:
    transport = client._t
    request = transport.request

    def without_runs(message, *args, **kw):
        if message.get("type") == "create_buffers":
            message = {k: v for k, v in message.items() if k != "runs"}
        return request(message, *args, **kw)

    monkeypatch.setattr(transport, "request", without_runs)
    df = pd.DataFrame(np.arange(4 * 300_000, dtype=np.float64).reshape(300_000, 4))  # 2.4 MB columns
    object_id = client.put(df)
    reply = request({"type": "get_data", "ids": [int(object_id)]})
    assert len({seg for _, seg, _, _ in reply["blobs"]}) == 4  # a segment each: no run was made
    pd.testing.assert_frame_equal(client.get(object_id), df)
