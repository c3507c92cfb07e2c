"""Fixtures for the Ray adapter: a daemon of its own and one Ray cluster for the whole suite.

Ray starts once per session (``ray.init(num_cpus=2)`` takes several seconds on two cores);
its workers inherit ``VINEYARD_IPC_SOCKET``, ``RAY_AUTH_MODE=disabled`` and a ``PYTHONPATH``
reaching the test modules from the environment set here, before ``ray.init`` starts the
raylet. Everything is stopped by its
own handle: Ray with ``ray.shutdown()``, the daemon by its PID.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import vineyard
from vineyard.testing import Daemon

# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every Ray server on loopback (see tests/conftest.py)
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="package")
def store() -> Iterator[Daemon]:
    """This suite's daemon: the 100 MB transfers and the Ray Data jobs fit in 1 GiB."""
    daemon = Daemon(size="1Gi")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="package")
def ray_cluster(store: Daemon) -> Iterator[Any]:
    """A local Ray cluster whose workers find ``store`` through ``VINEYARD_IPC_SOCKET``."""
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in [*ENV, "VINEYARD_IPC_SOCKET", "PYTHONPATH"]}
    # Workers import the test modules that define remote functions by name.
    path = os.pathsep.join(p for p in (os.path.dirname(__file__), saved["PYTHONPATH"]) if p)
    os.environ.update(ENV, VINEYARD_IPC_SOCKET=store.socket, PYTHONPATH=path)
    # Loopback only, a new local cluster even if RAY_ADDRESS is set, and a private temp
    # dir (short: Ray's socket paths are length-bounded) so concurrent suites never meet.
    temp_dir = tempfile.mkdtemp(prefix="vr-", dir="/tmp")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 << 20,
        log_to_driver=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
    )
    # Ray Data's context warns about its own deprecated defaults when it is first made
    # (`use_push_based_shuffle`); make it here, where that warning is not the test's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray.data

        ray.data.DataContext.get_current()
    try:
        yield ray
    finally:
        ray.shutdown(wait_for_processes=True)  # gone before their temp dir is
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def client(store: Daemon) -> Iterator[vineyard.Client]:
    c = vineyard.connect(store.socket)
    yield c
    c.close()


@pytest.fixture
def no_leaks(client: vineyard.Client) -> Iterator[vineyard.Client]:
    """Fails the test if it leaves objects behind: adapter tests clean up after themselves."""
    before = client.status.objects
    yield client
    assert client.status.objects == before, "the test left objects in the store"
