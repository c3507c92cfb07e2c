"""Real deployments: ``dask worker --preload-nanny vineyard.contrib.dask.preload`` and
``--worker-class vineyard.contrib.dask.VineyardWorker``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("distributed")

import dask
import dask_tasks as tasks
from conftest import HERE, make_cluster, wait_for
from distributed import Client, wait

from vineyard.testing import non_loopback_listeners

MB = 1_000_000


@pytest.mark.parametrize("how", ["--preload-nanny", "--worker-class"])
def test_dask_worker_cli(how, daemon, store, tmp_path):
    option = ["--preload-nanny", "vineyard.contrib.dask.preload"] if how == "--preload-nanny" else [
        "--worker-class", "vineyard.contrib.dask.VineyardWorker"]
    with make_cluster(n_workers=0) as cluster, Client(cluster) as client:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--nworkers", "1",
             "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "2GiB",
             # the nanny serves HTTP (health, metrics) even without a dashboard: on every
             # interface unless told otherwise
             "--dashboard-address", "127.0.0.1:0",
             "--local-directory", str(tmp_path), *option],
            env={**os.environ, "VINEYARD_IPC_SOCKET": daemon.socket,
                 "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            client.wait_for_workers(1, timeout=60)
            assert non_loopback_listeners() == []
            (address,) = client.scheduler_info()["workers"]
            assert client.run(tasks.describe)[address] == {"data": True, "plugin": True}
            if how == "--preload-nanny":
                assert client.run(tasks.nanny_monitor, nanny=True) == {address: "_nanny_memory_monitor"}
            made = client.submit(tasks.frame, 4 * MB, pure=False)
            wait(made, timeout=60)
            oid = client.run(tasks.stored_object, made.key)[address]
            assert store.ref_counts([oid]) == [1]
        finally:
            worker.send_signal(signal.SIGTERM)  # a graceful close: the worker frees what it held
            worker.wait(60)
        assert worker.returncode is not None
        wait_for(lambda: store.ref_counts([oid]) == [None], "the stopped worker's objects to be freed")


def test_vineyard_worker_takes_its_settings_from_the_dask_config(daemon, store):
    with dask.config.set({"vineyard.ipc-socket": daemon.socket, "vineyard.threshold": "8 MiB"}):
        from vineyard.contrib.dask import VineyardWorker

        with make_cluster(n_workers=1, processes=False, protocol="tcp://", worker_class=VineyardWorker) as cluster, \
                Client(cluster) as client:
            (worker,) = cluster.workers.values()
            assert worker.data.threshold == 8 * 2**20
            assert worker.data.store.socket == daemon.socket
            small = client.submit(tasks.frame, 4 * MB, pure=False)
            big = client.submit(tasks.frame, 16 * MB, pure=False)
            wait([small, big], timeout=60)
            assert worker.data.object_id(small.key) is None
            assert worker.data.object_id(big.key) is not None
            del small, big


def test_the_local_cluster_listens_on_loopback_only(client):
    assert len(client.scheduler_info()["workers"]) == 2
    assert non_loopback_listeners() == []
