"""Lifetimes and memory: a crashed worker's references and objects go away, closing the cluster
leaves the store as it was, and shared pages do not count as a worker's own memory."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("distributed")

import dask_tasks as tasks
import numpy as np
from conftest import make_cluster, wait_for
from distributed import Client, wait

from vineyard.contrib.dask import VineyardNannyPlugin, VineyardWorkerData, VineyardWorkerPlugin

MB = 1_000_000


def test_closing_the_cluster_frees_everything_its_workers_held(daemon, store):
    before = store.status.objects
    with make_cluster(data=(VineyardWorkerData, {"socket": daemon.socket})) as cluster, Client(cluster) as client:
        client.register_plugin(VineyardWorkerPlugin())
        w1, w2 = sorted(client.scheduler_info()["workers"])
        made = client.submit(tasks.frame, 8 * MB, workers=[w1], pure=False)
        copied = client.submit(tasks.passthrough, made, workers=[w2], pure=False)  # by ID: both hold it
        other = client.submit(np.ones, 1 * MB, workers=[w2], pure=False)
        wait([copied, other])
        oid = client.run(tasks.stored_object, made.key, workers=[w1])[w1]
        assert store.ref_counts([oid]) == [2]
        assert store.status.objects > before
        # the futures are still alive when the cluster closes
    assert store.status.objects == before
    assert store.ref_counts([oid]) == [None]


def test_a_crashed_workers_objects_are_freed(daemon, store):
    with make_cluster(data=(VineyardWorkerData, {"socket": daemon.socket})) as cluster, Client(cluster) as client:
        client.register_plugin(VineyardWorkerPlugin())
        w1, _w2 = sorted(client.scheduler_info()["workers"])
        made = client.submit(tasks.frame, 8 * MB, workers=[w1], pure=False)
        wait(made)
        oid = client.run(tasks.stored_object, made.key, workers=[w1])[w1]
        assert store.ref_counts([oid]) == [1]
        os.kill(client.run(tasks.pid, workers=[w1])[w1], signal.SIGKILL)
        # its connection closed with it (the reference went), and the scheduler plugin had a
        # surviving worker on the same store delete what nobody holds any more
        wait_for(lambda: store.ref_counts([oid]) == [None], "the crashed worker's object to be swept")
        del made


@pytest.fixture
def small_workers(daemon):
    """Workers whose memory limit is below what they map of the store."""
    with make_cluster(memory_limit="400MiB", data=(VineyardWorkerData, {"socket": daemon.socket})) as cluster, \
            Client(cluster) as client:
        client.register_plugin(VineyardWorkerPlugin())
        client.register_plugin(VineyardNannyPlugin())
        yield client


def test_shared_pages_do_not_count_as_worker_memory(small_workers, store):
    client = small_workers
    limit = 400 * 2**20
    payload = np.ones(360 * MB // 8)  # alone nearly the nanny's threshold (95 % of 400 MiB)
    oid = store.put(payload)
    del payload
    try:
        before = client.run(tasks.memory)
        sums = client.gather([client.submit(tasks.read_stored, oid, workers=[w], pure=False) for w in before])
        assert sums == [360 * MB // 8] * 2
        time.sleep(1.0)  # several rounds of the workers' and nannies' memory monitors
        after = client.run(tasks.memory)
        assert set(after) == set(before), "a worker was restarted"
        for worker, seen in after.items():
            assert seen["pid"] == before[worker]["pid"]
            # by RSS the worker is over the nanny's restart threshold (95 %) ...
            assert seen["rss"] > 0.95 * limit
            # ... but what distributed counts is below its pause threshold (80 %)
            assert seen["counted"] < 0.8 * limit
            assert seen["counted"] < seen["rss"] - 200 * MB
            assert seen["status"] == "running"
    finally:
        store.delete(oid)
