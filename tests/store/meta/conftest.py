"""Fixtures for the metadata backend tests: a private etcd per module and a harness that
gives the contract tests the same handles on both backends.

The etcd tests skip when no etcd executable exists, except under ``CI=true``, where a
missing etcd fails them: CI must run them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator

import pytest

from vineyard.store.meta import MetaBackend, session_prefix
from vineyard.store.meta.etcd import EtcdBackend
from vineyard.store.meta.launch import EtcdProcess, find_etcd
from vineyard.store.meta.local import LocalBackend, LocalStore

__all__ = ["Harness", "ManualClock"]

_prefixes = itertools.count()


def require_etcd() -> None:
    if find_etcd() is None:
        reason = "no etcd executable on PATH (apt-get install etcd-server, or set VINEYARD_ETCD)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the etcd tests: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdProcess]:
    """One private etcd on loopback for the whole test module, stopped by its PID."""
    require_etcd()
    process = EtcdProcess()
    yield process
    process.stop()


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """What a contract test needs from a backend kind, with the differences hidden.

    ``backend()`` opens another handle on the same store and prefix: another daemon of the
    same cluster. ``elapse(s)`` lets ``s`` seconds of lease time pass: the manual clock
    moves for ``local``, real time goes by for ``etcd``.
    """

    def __init__(self, kind: str, opener: Callable[[str], MetaBackend], clock: ManualClock | None) -> None:
        self.kind = kind
        self.prefix = session_prefix(f"vytest{next(_prefixes)}-{os.getpid()}")
        self._opener = opener
        self._clock = clock
        self._open: list[MetaBackend] = []

    def backend(self, prefix: str | None = None) -> MetaBackend:
        backend = self._opener(prefix or self.prefix)
        self._open.append(backend)
        return backend

    def elapse(self, seconds: float) -> None:
        if self._clock is not None:
            self._clock.advance(seconds)
        else:
            time.sleep(seconds)

    def close(self) -> None:
        for backend in self._open:
            backend.close()


def _wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, timeout=15, what=...)``: poll every 10 ms, fail on timeout."""
    return _wait_for


@pytest.fixture(params=["local", "etcd"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "local":
        clock = ManualClock()
        store = LocalStore(clock=clock)
        h = Harness("local", lambda prefix: LocalBackend(store, prefix), clock)
        yield h
        h.close()
        store.close()
    else:
        server: EtcdProcess = request.getfixturevalue("etcd")
        h = Harness("etcd", lambda prefix: EtcdBackend(server.endpoint, prefix, timeout=10.0), None)
        yield h
        h.close()
