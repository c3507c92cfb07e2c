"""When the daemon busy-polls for the next request (``PollWindow``): pure logic, explicit
clock readings, no timing."""

from __future__ import annotations

import pytest

from vineyard.store.server import PollWindow

US = 1e-6


def _after_exchange(window: PollWindow, start: float, work: float, sender: int = 1) -> float:
    """A request from ``sender`` arrives at ``start``; answering it takes ``work``."""
    window.woke(start, [sender])
    window.done(start + work)
    return start + work


def test_the_window_opens_when_the_reply_is_out_not_when_the_request_came() -> None:
    window = PollWindow(100 * US, cpus=2)
    end = _after_exchange(window, 1.0, 0.0)  # a first, quick exchange starts polling
    end = _after_exchange(window, end + 10 * US, 80 * US)  # a request that took 80 µs to answer
    assert window.busy_until == pytest.approx(end + 100 * US)  # the full window follows it


def test_polling_stops_after_a_long_gap_and_starts_again_after_a_short_one() -> None:
    window = PollWindow(100 * US, cpus=2)
    end = _after_exchange(window, 1.0, 5 * US)
    assert window.busy_until == 0.0  # the first request after a long quiet: no polling yet
    end = _after_exchange(window, end + 10 * US, 5 * US)
    assert window.busy_until > 0
    end = _after_exchange(window, end + 300 * US, 5 * US)  # quiet for more than twice the window
    assert window.busy_until == 0.0
    end = _after_exchange(window, end + 150 * US, 5 * US)  # requests close together again
    assert window.busy_until == pytest.approx(end + 100 * US)


def test_no_polling_while_as_many_clients_are_busy_as_there_are_cpus() -> None:
    window = PollWindow(100 * US, cpus=2)
    end = _after_exchange(window, 1.0, 5 * US, sender=1)
    end = _after_exchange(window, end + 10 * US, 5 * US, sender=1)
    assert window.busy_until > 0  # one busy client on two CPUs
    end = _after_exchange(window, end + 10 * US, 5 * US, sender=2)  # two busy clients, two CPUs
    assert window.busy_until == 0.0
    end = _after_exchange(window, end + 20 * US, 5 * US, sender=1)
    assert window.busy_until == 0.0  # client 2 sent something 25 µs ago: still busy
    for _ in range(300):  # 6 ms of client 1 alone
        end = _after_exchange(window, end + 15 * US, 5 * US, sender=1)
    assert window.busy_until == pytest.approx(end + 100 * US)


def test_quiet_connections_are_forgotten() -> None:
    window = PollWindow(100 * US, cpus=1)
    end = 1.0
    for conn in range(1000):  # a thousand short-lived connections, one after the other
        end = _after_exchange(window, end + 20 * US, 5 * US, sender=conn)
    # only those that sent something in the last 5 ms (25 µs apart: 200) are remembered
    assert len(window._last_seen) <= 5e-3 / 25e-6 + 2


def test_a_zero_window_never_polls() -> None:
    window = PollWindow(0.0, cpus=8)
    _after_exchange(window, 1.0, 0.0)
    _after_exchange(window, 1.0, 0.0)
    assert window.busy_until == 0.0
