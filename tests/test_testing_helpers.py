"""The helpers vineyard.testing offers to adapters and third parties."""

from __future__ import annotations

import itertools
import socket

import pytest

from vineyard.testing import _is_loopback, non_loopback_listeners, wait_until


def test_wait_until_returns_the_first_true_value():
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout=5) == "done"


def test_wait_until_fails_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for the moon"):
        wait_until(lambda: False, timeout=0.05, what="the moon")


@pytest.mark.parametrize(
    ("hex_address", "loopback"),
    [
        ("0100007F", True),  # 127.0.0.1
        ("0500007F", True),  # 127.0.0.5
        ("00000000", False),  # 0.0.0.0
        ("0200000A", False),  # 10.0.0.2
        ("00000000000000000000000001000000", True),  # ::1
        ("0000000000000000FFFF00000100007F", True),  # ::ffff:127.0.0.1
        ("00000000000000000000000000000000", False),  # ::
        ("0000000000000000FFFF00000200000A", False),  # ::ffff:10.0.0.2
    ],
)
def test_is_loopback_reads_proc_net_addresses(hex_address, loopback):
    assert _is_loopback(hex_address) is loopback


def test_non_loopback_listeners_sees_only_what_listens_elsewhere():
    with socket.socket() as listener:
        listener.bind(("127.0.0.3", 0))
        listener.listen()
        assert non_loopback_listeners() == []
