"""Same-host transfers by object ID between workers attached to one store, and the negative
control: the same exchange without the integration is an ordinary pickled transfer."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

import dask_tasks as tasks
import numpy as np
from conftest import make_cluster, wait_for
from distributed import Client, wait

MB = 1_000_000
PAYLOAD = 100 * MB


def payload_events(client: Client, worker: str) -> list[tuple[str, str]]:
    return [e for e in client.run(tasks.audit_events, workers=[worker])[worker] if e in tasks.PAYLOAD_CLASSES]


def test_dataframe_moves_by_id_and_lives_once(client, workers, store):
    """100 MB frame made on w1, read on w2: no payload unpickled, one copy, two references."""
    w1, w2 = workers
    client.run(tasks.install_audit_hook, workers=[w2])
    anon_before = client.run(tasks.rss_anon, workers=[w2])[w2]
    memory_before = store.status.memory_usage
    puts_before = client.run(tasks.stats, workers=[w2])[w2]["put"]

    made = client.submit(tasks.frame, PAYLOAD, workers=[w1], pure=False)
    seen = client.submit(tasks.touch, made, workers=[w2], pure=False).result()

    assert payload_events(client, w2) == []
    assert seen["type"] == "DataFrame"
    assert all(seen["in_store"]), "the consumer's columns are not views of the store"
    assert not any(seen["writeable"])
    # the consumer's private memory did not take a second copy
    assert seen["rss_anon"] - anon_before < PAYLOAD // 2

    oid = client.run(tasks.stored_object, made.key, workers=[w1])[w1]
    assert oid is not None
    assert client.run(tasks.stored_object, made.key, workers=[w2])[w2] == oid  # adopted, not re-stored
    assert store.ref_counts([oid]) == [2]
    assert PAYLOAD <= store.status.memory_usage - memory_before < PAYLOAD * 3 // 2  # once, not twice
    memory = client.run(tasks.memory, workers=[w2])[w2]
    assert memory["counted"] <= memory["rss"] - PAYLOAD // 2  # the store's pages are not w2's own memory
    stats = client.run(tasks.stats)
    assert stats[w1]["ids_sent"] >= 1
    assert stats[w2]["ids_received"] >= 1
    assert stats[w2]["put"] == puts_before  # w2 stored nothing of its own

    del made
    wait_for(lambda: store.ref_counts([oid]) == [None], "the frame to be freed once its future is released")


def test_ndarray_and_arrow_table_move_by_id(client, workers, store):
    w1, w2 = workers
    client.run(tasks.install_audit_hook, workers=[w2])
    array = client.submit(np.arange, 2 * MB, dtype="int64", workers=[w1], pure=False)
    table = client.submit(tasks.table, 16 * MB, workers=[w1], pure=False)
    seen = client.gather([client.submit(tasks.touch, x, workers=[w2], pure=False) for x in (array, table)])
    assert payload_events(client, w2) == []
    assert [s["type"] for s in seen] == ["ndarray", "Table"]
    for s in seen:
        assert all(s["in_store"])
        assert not any(s["writeable"])
    assert seen[0]["sum"] == float(np.arange(2 * MB, dtype="int64").sum())
    ids = [client.run(tasks.stored_object, x.key, workers=[w1])[w1] for x in (array, table)]
    assert store.ref_counts(ids) == [2, 2]
    del array, table
    wait_for(lambda: store.ref_counts(ids) == [None, None], "both objects to be freed")


def test_dicts_of_frames_move_their_large_elements_by_id(client, workers, store):
    """Dask's task shuffle hands dicts of frames around; their big elements go by ID."""
    w1, w2 = workers
    client.run(tasks.install_audit_hook, workers=[w2])
    made = client.submit(tasks.groups, 4 * MB, workers=[w1], pure=False)
    seen = client.submit(tasks.touch_groups, made, workers=[w2], pure=False).result()
    assert all(seen[0]["in_store"])
    assert all(seen[1]["in_store"])
    assert not any(seen[2]["in_store"])  # the small one travelled as bytes
    ids = client.run(tasks.stored_objects, made.key)
    assert len(ids[w1]) == 2
    assert sorted(ids[w2]) == sorted(ids[w1])
    assert store.ref_counts(ids[w1]) == [2, 2]
    del made
    wait_for(lambda: store.ref_counts(ids[w1]) == [None, None], "the elements to be freed")


def test_a_task_shuffle_gives_the_same_rows(client, store):
    import dask.dataframe as dd
    import pandas as pd

    sent_before = sum(s["ids_sent"] for s in client.run(tasks.stats).values())
    parts = [tasks.shuffle_part(i, 500_000) for i in range(4)]  # 8 MB partitions, 2 MB pieces
    ddf = dd.from_map(tasks.shuffle_part, range(4), rows=500_000, meta={"key": "int64", "val": "float64"})
    shuffled = ddf.shuffle("key", npartitions=4, shuffle_method="tasks")
    result = client.compute(shuffled).result()
    expected = pd.concat(parts)
    pd.testing.assert_frame_equal(result.sort_values(["key", "val"]).reset_index(drop=True),
                                  expected.sort_values(["key", "val"]).reset_index(drop=True))
    assert sum(s["ids_sent"] for s in client.run(tasks.stats).values()) > sent_before
    del result


def test_small_values_stay_in_the_heap_and_travel_as_bytes(client, workers, store):
    w1, w2 = workers
    before = store.status.objects
    client.run(tasks.install_audit_hook, workers=[w2])
    small = client.submit(tasks.frame, 64_000, workers=[w1], pure=False)
    seen = client.submit(tasks.touch, small, workers=[w2], pure=False).result()
    assert not any(seen["in_store"])
    assert client.run(tasks.stored_object, small.key, workers=[w1])[w1] is None
    assert store.status.objects == before
    assert payload_events(client, w2) != []  # below the threshold: the ordinary pickled transfer


def test_a_result_that_is_its_input_is_adopted_not_copied(client, workers, store):
    w1, _ = workers
    made = client.submit(tasks.frame, 8 * MB, workers=[w1], pure=False)
    same = client.submit(tasks.passthrough, made, workers=[w1], pure=False)
    wait([same])
    ids = {client.run(tasks.stored_object, f.key, workers=[w1])[w1] for f in (made, same)}
    assert len(ids) == 1
    assert None not in ids
    (oid,) = ids
    puts = client.run(tasks.stats, workers=[w1])[w1]["put"]
    first = made.key
    del made  # the other key still holds the object
    wait_for(lambda: not client.run(tasks.holds, first, workers=[w1])[w1], "the first key to be released")
    assert store.ref_counts([oid]) == [1]
    assert client.run(tasks.stats, workers=[w1])[w1]["put"] == puts
    del same
    wait_for(lambda: store.ref_counts([oid]) == [None], "the shared object to be freed with its last key")


def test_results_gathered_by_the_client_arrive_as_ordinary_values(client, workers, store):
    w1, _ = workers
    made = client.submit(tasks.frame, 8 * MB, seed=3, workers=[w1], pure=False)
    got = made.result()  # this process announced no store: it is sent the bytes
    expected = tasks.frame(8 * MB, seed=3)
    assert got.equals(expected)
    del made, got


def test_without_the_integration_the_transfer_is_pickled(daemon):
    """Negative control: the same exchange on a plain cluster unpickles the payload."""
    with make_cluster() as plain, Client(plain) as client:
        w1, w2 = sorted(client.scheduler_info()["workers"])
        client.run(tasks.install_audit_hook, workers=[w2])
        made = client.submit(tasks.frame, PAYLOAD, workers=[w1], pure=False)
        seen = client.submit(tasks.touch, made, workers=[w2], pure=False).result()
        events = payload_events(client, w2)
        assert ("pandas._libs.internals", "_unpickle_block") in events
        assert not any(seen["in_store"])
        del made
