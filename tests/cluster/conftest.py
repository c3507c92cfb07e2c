"""Fixtures for several daemons on loopback that share one etcd.

One etcd serves the whole session (:class:`~vineyard.store.meta.launch.EtcdProcess`, on
127.0.0.1, stopped by its PID); each test gets a prefix of its own, so its daemons form a
cluster of their own. Daemons bind 127.0.0.1 with free RPC ports, are started in their own
sessions and stopped by their PIDs. The tests skip without an etcd executable, except
under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vineyard
from vineyard.store.meta.launch import EtcdProcess, find_etcd
from vineyard.testing import Daemon, wait_until

__all__ = ["Node", "wait_until"]

_prefixes = itertools.count()


def require_etcd() -> None:
    if find_etcd() is None:
        reason = "no etcd executable on PATH (apt-get install etcd-server, or set VINEYARD_ETCD)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the multi-daemon tests: {reason}")
        pytest.skip(reason)




class Node:
    """One daemon of a test cluster and a client of it (opened on demand)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._client: vineyard.Client | None = None

    @property
    def client(self) -> vineyard.Client:
        if self._client is None:
            self._client = vineyard.connect(self.daemon.socket)
        return self._client

    @property
    def socket(self) -> str:
        return self.daemon.socket

    @property
    def endpoint(self) -> str:
        assert self.daemon.rpc_endpoint is not None
        return self.daemon.rpc_endpoint

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """``wait_until(condition, timeout=20, what=...)``: poll every 20 ms, fail on timeout."""
    return wait_until


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdProcess]:
    require_etcd()
    process = EtcdProcess()
    yield process
    process.stop()


@pytest.fixture
def prefix() -> str:
    return f"vytest-cluster{next(_prefixes)}-{os.getpid()}"


@pytest.fixture
def make_nodes(etcd: EtcdProcess, prefix: str) -> Iterator[Callable[..., list[Node]]]:
    """``make_nodes(n, ttl=2, size="256Mi", args=[...])``: ``n`` daemons in one cluster,
    started one after another (so their instance ids follow their order)."""
    started: list[Node] = []

    def make(
        n: int, ttl: int = 2, size: str = "256Mi", args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> list[Node]:
        flags = [
            "--meta",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint,
            "--etcd-prefix",
            prefix,
            "--lease-ttl",
            str(ttl),
            "--rpc-host",
            "127.0.0.1",
            *(args or []),
        ]
        nodes = []
        for _ in range(n):
            node = Node(Daemon(size=size, rpc=True, args=flags, env=env))
            started.append(node)
            nodes.append(node)
        return nodes

    yield make
    for node in started:
        node.close_client()
        if node.daemon.proc.poll() is None and _stopped(node.pid):
            node.daemon.kill()  # SIGTERM would stay pending while it is stopped
        else:
            node.daemon.stop()


def _stopped(pid: int) -> bool:
    """Whether the process is in the stopped state (SIGSTOP): SIGTERM would wait forever."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False
