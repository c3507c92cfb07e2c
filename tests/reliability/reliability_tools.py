"""Bounded waits and small helpers shared by the reliability tests."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import vineyard

__all__ = ["MiB", "call_bounded", "settle", "wait_for"]

MiB = 1 << 20
T = TypeVar("T")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy; its last value (falsy if the time ran out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def settle(client: vineyard.Client, memory: int, timeout: float = 30.0) -> int:
    """Poll the daemon's ``memory_usage`` until it is ``memory`` (the daemon handles a closed
    connection in its own time); the last value seen."""
    gc.collect()
    seen = [client.status.memory_usage]

    def done() -> bool:
        seen[0] = client.status.memory_usage
        return seen[0] == memory

    wait_for(done, timeout)
    return seen[0]


def call_bounded(func: Callable[[], T], timeout: float = 30.0) -> tuple[str, Any]:
    """Run ``func`` in a thread: ``("ok", result)``, ``("raised", exc)`` or ``("hung", None)``.

    A hang is a test failure, not a stuck test run: the caller asserts on the outcome.
    """
    outcome: list[tuple[str, Any]] = []

    def target() -> None:
        try:
            outcome.append(("ok", func()))
        except BaseException as exc:  # handed to the test, which asserts on it
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else ("hung", None)
