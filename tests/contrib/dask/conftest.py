"""Fixtures for the Dask integration: a store daemon, and a 2-worker ``LocalCluster`` whose
workers keep their data in it (real processes, loopback only, no dashboard).

Everything runs against real distributed: each fixture stops what it started by its own
handle (``cluster.close()``, ``Daemon.stop()`` by PID). Functions that run on workers live in
``dask_tasks.py``: workers import it by name (``LocalCluster`` workers inherit this process's
``sys.path``; ``dask worker`` processes get :data:`HERE` on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster

import vineyard
from vineyard.contrib.dask import VineyardWorkerData, VineyardWorkerPlugin
from vineyard.testing import Daemon, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
WAIT = 30.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` until it is truthy (returns it); fail after ``timeout`` seconds."""
    return wait_until(condition, timeout, what, interval=0.05)


def make_cluster(**kwargs: Any) -> LocalCluster:
    options: dict[str, Any] = {
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        # the scheduler serves HTTP (health, metrics) even without a dashboard, by default on
        # 8787: a free loopback port keeps concurrent clusters from colliding
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
        "host": "127.0.0.1",
        "memory_limit": "4GiB",
    }
    options.update(kwargs)
    return LocalCluster(**options)


@pytest.fixture(scope="package")
def daemon() -> Iterator[Daemon]:
    """The store of the Dask tests (no RPC: workers reach it through its UNIX socket)."""
    d = Daemon(size="1536Mi")
    yield d
    d.stop()


@pytest.fixture
def store(daemon: Daemon) -> Iterator[vineyard.Client]:
    """A client of the test store; the test must leave as many objects as it found."""
    client = vineyard.connect(daemon.socket)
    before = client.status.objects
    yield client
    wait_for(lambda: client.status.objects == before, "the store to return to its object count")
    client.close()


@pytest.fixture(scope="module")
def cluster(daemon: Daemon) -> Iterator[LocalCluster]:
    """Two worker processes with :class:`VineyardWorkerData` and the worker plugin.

    Per module, not per session: the scheduler runs on a thread of this process, and other
    suites of the same session count this process's file descriptors."""
    c = make_cluster(data=(VineyardWorkerData, {"socket": daemon.socket}))
    with Client(c) as client:
        client.register_plugin(VineyardWorkerPlugin())
    yield c
    c.close()


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


@pytest.fixture
def workers(client: Client) -> tuple[str, str]:
    w1, w2 = sorted(client.scheduler_info()["workers"])
    return w1, w2
