"""Fixtures: a real daemon per test session (with RPC on a free loopback port), clients, and
a factory for tests that need a daemon of their own (small memory limit, special flags)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Ray turns a node address of 127.0.0.1 into the host's own interface address and then
# listens on every interface, unless clusters are off (as on macOS): then it stays on
# loopback. Set before anything imports ray; Ray's own processes inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import vineyard
from vineyard.testing import Daemon


@pytest.fixture(scope="session")
def store() -> Iterator[Daemon]:
    """The shared daemon of this test session (1 GiB, RPC on 127.0.0.1, free port)."""
    daemon = Daemon(size="1Gi", rpc=True)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def vineyard_ipc_socket(store: Daemon) -> str:
    return store.socket


@pytest.fixture(scope="session")
def vineyard_endpoint(store: Daemon) -> str:
    assert store.rpc_endpoint is not None
    return store.rpc_endpoint


@pytest.fixture
def client(store: Daemon) -> Iterator[vineyard.Client]:
    c = vineyard.connect(store.socket)
    yield c
    c.close()


@pytest.fixture
def rpc_client(store: Daemon) -> Iterator[vineyard.Client]:
    assert store.rpc_endpoint is not None
    host, port = store.rpc_endpoint.rsplit(":", 1)
    c = vineyard.connect(host, int(port))
    yield c
    c.close()


@pytest.fixture(params=["ipc", "rpc"])
def any_client(request: pytest.FixtureRequest, store: Daemon) -> Iterator[vineyard.Client]:
    """Each test runs once over IPC (shared memory) and once over RPC (copied bytes)."""
    if request.param == "ipc":
        c = vineyard.connect(store.socket)
    else:
        assert store.rpc_endpoint is not None
        host, port = store.rpc_endpoint.rsplit(":", 1)
        c = vineyard.connect(host, int(port))
    yield c
    c.close()


def _daemon_factory() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(**kw: Any) -> Daemon:
        daemon = Daemon(**kw)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Daemon]]:
    """Start daemons of one's own: ``make_daemon(size="64Mi", args=[...])``; stopped by PID."""
    yield from _daemon_factory()


@pytest.fixture(scope="module")
def make_daemon_module() -> Iterator[Callable[..., Daemon]]:
    """The same, for daemons shared by one module's tests."""
    yield from _daemon_factory()
